# Oracle tests: the C model against the PyTorch reference in tests/oracle/.
# Both need Debian's python3 with torch; without it they exit 77 and ctest
# shows them as skipped rather than passed.
if(TARGET test_oracle)
  set_tests_properties(test_oracle PROPERTIES SKIP_RETURN_CODE 77)
endif()

# The reference itself against a plain-loop reading of model.h and layers/*.h
# plus finite differences; no C involved, so a failure here blames model.py.
add_test(NAME oracle_selftest
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/oracle/check.py --selftest)
set_tests_properties(oracle_selftest PROPERTIES SKIP_RETURN_CODE 77
  ENVIRONMENT "OMP_NUM_THREADS=2")

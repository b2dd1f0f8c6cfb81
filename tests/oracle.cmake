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

# The expert-parallel PyTorch peer (perf/torch_ep.py, gloo, 2 ranks under
# mpirun) against the single-process oracle: outputs and every gradient, in
# float64 and float32, so perf/reproduce compares moe.c with a correct peer.
add_test(NAME peer_torch_ep_check
  COMMAND sh -c "/usr/bin/python3 -c 'import torch.distributed as d; assert d.is_gloo_available()' 2>/dev/null || exit 77; exec /usr/bin/python3 ${CMAKE_SOURCE_DIR}/perf/torch_ep.py --check --nproc 2")
set_tests_properties(peer_torch_ep_check PROPERTIES SKIP_RETURN_CODE 77
  ENVIRONMENT "OMP_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1" PROCESSORS 2)

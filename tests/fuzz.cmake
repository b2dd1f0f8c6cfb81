# libFuzzer on the control plane's frame decoder and message validation
# (tests/fuzz/run_fuzz.sh builds its own ASan+UBSan binary with clang, runs it
# for a bounded time, fails on any crash); once, in the plain tree.
if(NOT MOE_SANITIZE)
  add_test(NAME fuzz_frame COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/run_fuzz.sh 30 ${CMAKE_BINARY_DIR}/fuzz_frame)
  set_tests_properties(fuzz_frame PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()

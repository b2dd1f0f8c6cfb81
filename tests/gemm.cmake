# test_gemm again with the AVX-512 kernels moe-worker selects on CPUs that have them.
add_test(NAME test_gemm_skylakex COMMAND test_gemm)
set_tests_properties(test_gemm_skylakex PROPERTIES ENVIRONMENT "OPENBLAS_CORETYPE=SkylakeX;OMP_NUM_THREADS=2")

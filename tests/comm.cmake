# comm/: the MPI backend (tests/mpi/comm.c) on 1 to 4 ranks, and again with
# MOE_COMM_MAX_CHUNK=7 (--max-chunk) so every count above 7 takes the split /
# derived-datatype paths and must give the same results.
# Open MPI's own allocations show up as leaks under ASan: leak checking is off
# for these runs (address and UB checking stay on).
foreach(np 1 2 3 4)
  moe_mpi_test(mpi_comm_np${np} ${np} mpi_comm)
  set_property(TEST mpi_comm_np${np} APPEND PROPERTY ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0")
  set_tests_properties(mpi_comm_np${np} PROPERTIES TIMEOUT 120)
endforeach()
foreach(np 2 3 4)
  moe_mpi_test(mpi_comm_np${np}_chunk7 ${np} mpi_comm --max-chunk 7)
  set_property(TEST mpi_comm_np${np}_chunk7 APPEND PROPERTY ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0")
  set_tests_properties(mpi_comm_np${np}_chunk7 PROPERTIES TIMEOUT 120)
endforeach()

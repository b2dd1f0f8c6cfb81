# Sharded checkpoints on 4 ranks with EP 2 (tests/mpi/ckpt.c): each owner
# writes its shard, the manifest records the cuts, reload is bit-exact and one
# process reads the whole tensors back. Again with the distributed optimizer.
# Open MPI's own allocations show up as leaks under ASan: leak checking is off
# for these runs (address and UB checking stay on), as in comm.cmake.
moe_mpi_test(mpi_ckpt_np4 4 mpi_ckpt --ep 2)
moe_mpi_test(mpi_ckpt_np4_distopt 4 mpi_ckpt --ep 2 --distopt)
foreach(t mpi_ckpt_np4 mpi_ckpt_np4_distopt)
  set_property(TEST ${t} APPEND PROPERTY ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0")
  set_tests_properties(${t} PROPERTIES TIMEOUT 120)
endforeach()

# Integration tests: the programs driven as a user would (tests/integration/*.sh).
# Each script gets the bin dir, a scratch dir and the source dir.
set(MOE_IT ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set(MOE_IT_SCRATCH ${CMAKE_BINARY_DIR}/it)

# Workers run MPI, whose dlopen'ed components leave allocations LeakSanitizer
# cannot attribute (unknown module) at exit: leak checking is off for these
# end-to-end runs (address and UB checks stay on); the unit tests check leaks.
function(moe_script_test name)
  add_test(NAME ${name}
    COMMAND bash ${MOE_IT}/${name}.sh ${CMAKE_BINARY_DIR}/bin ${MOE_IT_SCRATCH} ${CMAKE_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES ENVIRONMENT
    "OMP_NUM_THREADS=2;MOE_CACHE_DIR=${MOE_IT_SCRATCH}/cache;ASAN_OPTIONS=detect_leaks=0:abort_on_error=1"
    ${ARGN})
endfunction()

moe_script_test(it_kjv_data FIXTURES_SETUP kjv)
moe_script_test(it_cli_errors)
moe_script_test(it_train_kjv FIXTURES_REQUIRED kjv)
moe_script_test(it_resume_exact FIXTURES_REQUIRED kjv)
moe_script_test(it_checkpoint_corrupt FIXTURES_REQUIRED kjv)
moe_script_test(it_train_multirank FIXTURES_REQUIRED kjv)
moe_script_test(it_train_folded FIXTURES_REQUIRED kjv)
moe_script_test(it_interrupt FIXTURES_REQUIRED kjv)
moe_script_test(it_trace_routing FIXTURES_REQUIRED kjv)
moe_script_test(it_placement FIXTURES_REQUIRED kjv)
moe_script_test(it_safetensors FIXTURES_REQUIRED kjv)
moe_script_test(it_emulated_cluster SKIP_RETURN_CODE 77 TIMEOUT 120 PROCESSORS 2)
moe_script_test(it_coordinator FIXTURES_REQUIRED kjv)
moe_script_test(it_slurm FIXTURES_REQUIRED kjv SKIP_RETURN_CODE 77 TIMEOUT 300 PROCESSORS 2)

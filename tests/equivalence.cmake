# Parallel layouts against the single-rank run (tests/mpi/equivalence.c).
moe_mpi_test(mpi_equiv_dp2 2 mpi_equivalence --ep 1)
moe_mpi_test(mpi_equiv_ep2 2 mpi_equivalence --ep 2)
moe_mpi_test(mpi_equiv_ep4 4 mpi_equivalence --ep 4)
moe_mpi_test(mpi_equiv_ep2_dp2 4 mpi_equivalence --ep 2)
# Gradient sums: blocking all-reduces with EP (the default there: non-blocking,
# overlapped), and a pipeline with DP, whose backward makes no MPI call (blocking).
moe_mpi_test(mpi_equiv_ep2_dp2_blocking_grad_reduce 4 mpi_equivalence --ep 2 --no-overlap-grad-reduce)
moe_mpi_test(mpi_equiv_pp2_dp2 4 mpi_equivalence --pp 2 --layers 4)
moe_mpi_test(mpi_equiv_ep4_8experts 4 mpi_equivalence --ep 4 --experts 8)
moe_mpi_test(mpi_equiv_ep2_starved 2 mpi_equivalence --ep 2 --starve)
moe_mpi_test(mpi_equiv_ep2_capacity 2 mpi_equivalence --ep 2 --capacity 0.6)
# Per-layer expert placement from a (permuted, unreplicated) plan, and
# checkpoints across placements.
moe_mpi_test(mpi_equiv_ep2_placement 2 mpi_equivalence --ep 2 --placement-permute)
moe_mpi_test(mpi_equiv_ep4_placement 4 mpi_equivalence --ep 4 --experts 8 --placement-permute)
# Replicated experts: copies split their expert's tokens by the plan's shares
# and sum their gradients; with fine overlap, the distributed optimizer,
# ETP + SP, and a pipeline with coarse overlap.
moe_mpi_test(mpi_equiv_ep2_replicated 2 mpi_equivalence --ep 2 --placement-replicate)
moe_mpi_test(mpi_equiv_ep4_replicated_fine 4 mpi_equivalence --ep 4 --experts 8 --placement-replicate --overlap 2)
moe_mpi_test(mpi_equiv_ep2_dp2_replicated_distopt 4 mpi_equivalence --ep 2 --placement-replicate --distopt)
moe_mpi_test(mpi_equiv_tp2_sp_ep2_etp2_replicated 4 mpi_equivalence --tp 2 --sp --etp 2 --ep 2 --placement-replicate)
moe_mpi_test(mpi_equiv_pp2_ep2_replicated_coarse 4 mpi_equivalence --pp 2 --ep 2 --layers 4 --placement-replicate
             --overlap 1)
# The same with the distributed optimizer (AdamW state sharded over DP / EDP).
moe_mpi_test(mpi_equiv_dp2_distopt 2 mpi_equivalence --ep 1 --distopt)
moe_mpi_test(mpi_equiv_ep2_distopt 2 mpi_equivalence --ep 2 --distopt)
moe_mpi_test(mpi_equiv_ep2_dp2_distopt 4 mpi_equivalence --ep 2 --distopt)
# Tensor (with and without sequence parallelism), context and expert-tensor
# parallelism, folded with EP and DP; --ckpt round-trips a checkpoint through
# one process and back, bit for bit.
moe_mpi_test(mpi_equiv_tp2 2 mpi_equivalence --tp 2 --ckpt)
moe_mpi_test(mpi_equiv_tp2_sp 2 mpi_equivalence --tp 2 --sp)
moe_mpi_test(mpi_equiv_cp2 2 mpi_equivalence --cp 2 --ckpt)
moe_mpi_test(mpi_equiv_tp2_ep2 4 mpi_equivalence --tp 2 --ep 2)
moe_mpi_test(mpi_equiv_tp2_ep2_etp2 4 mpi_equivalence --tp 2 --ep 2 --etp 2)
moe_mpi_test(mpi_equiv_tp2_sp_ep2_etp2 4 mpi_equivalence --tp 2 --sp --ep 2 --etp 2 --ckpt)
moe_mpi_test(mpi_equiv_cp2_ep4 4 mpi_equivalence --cp 2 --ep 4)
moe_mpi_test(mpi_equiv_tp2_cp2_ep4 4 mpi_equivalence --tp 2 --sp --cp 2 --ep 4 --ckpt)
moe_mpi_test(mpi_equiv_tp2_cp2_ep2_distopt 4 mpi_equivalence --tp 2 --cp 2 --ep 2 --distopt --ckpt)
moe_mpi_test(mpi_equiv_etp2_ep2 4 mpi_equivalence --etp 2 --ep 2)
# Pipeline parallelism (1F1B), alone and with the other dimensions; tied and
# untied embeddings.
moe_mpi_test(mpi_equiv_pp2 2 mpi_equivalence --pp 2 --ckpt)
moe_mpi_test(mpi_equiv_pp2_untied 2 mpi_equivalence --pp 2 --untie)
moe_mpi_test(mpi_equiv_pp4 4 mpi_equivalence --pp 4 --layers 4 --ckpt)
moe_mpi_test(mpi_equiv_pp2_ep2_dp2 4 mpi_equivalence --pp 2 --ep 2 --ckpt)
moe_mpi_test(mpi_equiv_pp2_ep2_dp2_distopt 4 mpi_equivalence --pp 2 --ep 2 --distopt --ckpt)
moe_mpi_test(mpi_equiv_tp2_cp2_pp2_ep4 8 mpi_equivalence --pp 2 --tp 2 --sp --cp 2 --ep 4 --ckpt)
# explicit stage sizes: 1 + 3 layers on 2 stages; 1 + 2 + 2 + 1 on 4
moe_mpi_test(mpi_equiv_pp2_uneven 2 mpi_equivalence --pp 2 --layers 4 --first 1 --ckpt)
moe_mpi_test(mpi_equiv_pp4_uneven 4 mpi_equivalence --pp 4 --layers 6 --first 1 --last 1)
# interleaved 1F1B: 4 layers, 2 stages x 2 virtual stages of one layer each
moe_mpi_test(mpi_equiv_pp2_vpp2 2 mpi_equivalence --pp 2 --layers 4 --vpl 1 --ckpt)
moe_mpi_test(mpi_equiv_pp2_vpp2_ep2_dp2 4 mpi_equivalence --pp 2 --layers 4 --vpl 1 --ep 2 --untie)
# parallel/distopt.h against a reference, and checkpoints across the flag
# (tests/mpi/distopt.c), on 1 to 4 ranks ("ranks;ep").
foreach(cfg "1;1" "2;1" "2;2" "3;1" "4;2")
  list(GET cfg 0 np)
  list(GET cfg 1 ep)
  moe_mpi_test(mpi_distopt_np${np}_ep${ep} ${np} mpi_distopt --ep ${ep})
endforeach()
# Open MPI's own allocations show up as leaks under ASan: leak checking is off
# for these runs (address and UB checking stay on), as in comm.cmake.
foreach(t mpi_equiv_dp2 mpi_equiv_ep2 mpi_equiv_ep4 mpi_equiv_ep2_dp2 mpi_equiv_ep4_8experts
          mpi_equiv_ep2_dp2_blocking_grad_reduce mpi_equiv_pp2_dp2
          mpi_equiv_ep2_starved mpi_equiv_ep2_capacity mpi_equiv_ep2_placement mpi_equiv_ep4_placement
          mpi_equiv_ep2_replicated mpi_equiv_ep4_replicated_fine mpi_equiv_ep2_dp2_replicated_distopt
          mpi_equiv_tp2_sp_ep2_etp2_replicated mpi_equiv_pp2_ep2_replicated_coarse
          mpi_equiv_dp2_distopt mpi_equiv_ep2_distopt
          mpi_equiv_ep2_dp2_distopt mpi_equiv_tp2 mpi_equiv_tp2_sp mpi_equiv_cp2 mpi_equiv_tp2_ep2
          mpi_equiv_tp2_ep2_etp2 mpi_equiv_tp2_sp_ep2_etp2 mpi_equiv_cp2_ep4 mpi_equiv_tp2_cp2_ep4
          mpi_equiv_tp2_cp2_ep2_distopt mpi_equiv_etp2_ep2 mpi_equiv_pp2 mpi_equiv_pp2_untied mpi_equiv_pp4
          mpi_equiv_pp2_ep2_dp2 mpi_equiv_pp2_ep2_dp2_distopt mpi_equiv_tp2_cp2_pp2_ep4 mpi_equiv_pp2_vpp2
          mpi_equiv_pp2_vpp2_ep2_dp2 mpi_equiv_pp2_uneven mpi_equiv_pp4_uneven mpi_distopt_np1_ep1 mpi_distopt_np2_ep1 mpi_distopt_np2_ep2
          mpi_distopt_np3_ep1 mpi_distopt_np4_ep2)
  set_property(TEST ${t} APPEND PROPERTY ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0")
endforeach()
# The expert layer's overlap modes (none, coarse, fine) against each other,
# bit for bit (tests/mpi/overlap.c): 2 and 4 ranks, one thread (the driver
# tests between tasks) and two (thread 0 drives MPI), random send delays.
moe_mpi_test(mpi_overlap_np2 2 mpi_overlap --threads 1)
moe_mpi_test(mpi_overlap_np4 4 mpi_overlap --threads 2)
moe_mpi_test(mpi_overlap_np4_delay 4 mpi_overlap --threads 2 --delay 3000 --experts 16)
moe_mpi_test(mpi_overlap_np3_delay 3 mpi_overlap --threads 1 --delay 2000 --experts 6)
# and the whole model trained with them (1 coarse, 2 fine) matches one rank
moe_mpi_test(mpi_equiv_ep2_coarse 2 mpi_equivalence --ep 2 --overlap 1)
moe_mpi_test(mpi_equiv_ep4_fine 4 mpi_equivalence --ep 4 --experts 8 --overlap 2)
moe_mpi_test(mpi_equiv_tp2_ep2_etp2_fine 4 mpi_equivalence --tp 2 --sp --ep 2 --etp 2 --overlap 2)
foreach(t mpi_overlap_np2 mpi_overlap_np4 mpi_overlap_np4_delay mpi_overlap_np3_delay mpi_equiv_ep2_coarse
          mpi_equiv_ep4_fine mpi_equiv_tp2_ep2_etp2_fine)
  set_property(TEST ${t} APPEND PROPERTY ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0")
endforeach()

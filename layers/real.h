/*
** real: the element type of layers/.
**
** Every op in layers/ is written once over `real` and compiled twice: as float
** with the moe_ prefix (what training runs) and, with MOE_REAL_DOUBLE defined,
** as double with the moe_d_ prefix (what the finite-difference gradient tests
** run, so a backward pass is checked to ~1e-8 rather than to fp32 noise).
** Write MOE_OP(name) for every exported op.
*/
#ifndef MOE_REAL_H
#define MOE_REAL_H

#ifdef MOE_REAL_DOUBLE
typedef double real;
#define MOE_OP(name) moe_d_##name
#else
typedef float real;
#define MOE_OP(name) moe_##name
#endif

#endif

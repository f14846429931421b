//! Properties of the pure logic, checked by proptest over generated inputs: incremental label
//! spreading stays within its stated tolerance of a full pass and of a from-scratch build.

mod smoothing;

//! coordgen-kernels

"""The fast-weights layer: the module, the eager reference, the fused C++/CUDA op and its build, CPU ISA detection."""

// The CPU kernel's "avx2" path, compiled with -march=x86-64-v3 (AVX2, FMA) by
// crnn_plugins/cpu_isa.py (setup.py and the JIT build); see fastweights_cpu_path.h.
#define CRNN_CPU_PATH_NS cpu_avx2
#define CRNN_CPU_PATH_TABLE kCpuPathAvx2
#ifndef CRNN_CPU_PATH_NAME
#define CRNN_CPU_PATH_NAME "avx2"
#endif
#include "fastweights_cpu_path.h"

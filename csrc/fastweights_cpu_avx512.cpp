// The CPU kernel's "avx512" path, compiled with -march=x86-64-v4 (AVX-512 F/BW/CD/DQ/VL) by
// crnn_plugins/cpu_isa.py (setup.py and the JIT build); see fastweights_cpu_path.h.
#define CRNN_CPU_PATH_NS cpu_avx512
#define CRNN_CPU_PATH_TABLE kCpuPathAvx512
#ifndef CRNN_CPU_PATH_NAME
#define CRNN_CPU_PATH_NAME "avx512"
#endif
#include "fastweights_cpu_path.h"

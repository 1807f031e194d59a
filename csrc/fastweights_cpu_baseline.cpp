// The CPU kernel's "baseline" path, compiled with -march=x86-64 (SSE2) by crnn_plugins/cpu_isa.py
// (setup.py and the JIT build), or with the one -march of a CRNN_CPU_ARCH build, where it
// is the only path and is named "native"; see fastweights_cpu_path.h.
#define CRNN_CPU_PATH_NS cpu_baseline
#define CRNN_CPU_PATH_TABLE kCpuPathBaseline
#ifndef CRNN_CPU_PATH_NAME
#define CRNN_CPU_PATH_NAME "baseline"
#endif
#include "fastweights_cpu_path.h"

/* attention/hadamard.c — the fast Walsh–Hadamard butterfly (attention/hadamard.h),
 * in f32 for the step engine and in double for references. */
#include "attention/hadamard.h"

void kvd_hadamard(float *x, size_t d)
{
    for (size_t h = 1; h < d; h <<= 1)
        for (size_t i = 0; i < d; i += 2 * h)
            for (size_t j = i; j < i + h; j++) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
}

void kvd_hadamard_f64(double *x, size_t d)
{
    for (size_t h = 1; h < d; h <<= 1)
        for (size_t i = 0; i < d; i += 2 * h)
            for (size_t j = i; j < i + h; j++) {
                const double a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
}

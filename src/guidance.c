/* guidance: see include/ddpm/guidance.h. */
#include "ddpm/guidance.h"

#include <math.h>

/* population standard deviation, in double */
static double stdev(const float *x, size_t D) {
    double s = 0, ss = 0;
    for (size_t i = 0; i < D; i++) s += x[i];
    double m = s / (double)D;
    for (size_t i = 0; i < D; i++) ss += (x[i] - m) * (x[i] - m);
    return sqrt(ss / (double)D);
}

void guidance_combine(float *out, const float *cond, const float *uncond, float scale, float rescale, size_t D) {
    double sc = rescale > 0 ? stdev(cond, D) : 0; /* before out overwrites cond */
    for (size_t i = 0; i < D; i++) out[i] = uncond[i] + scale * (cond[i] - uncond[i]);
    if (rescale <= 0) return;
    double sg = stdev(out, D);
    if (!(sg > 0)) return;
    float f = (float)(rescale * sc / sg + (1.0 - rescale)); /* phi*g*sc/sg + (1-phi)*g = g*(phi*sc/sg + 1-phi) */
    for (size_t i = 0; i < D; i++) out[i] *= f;
}

int guidance_needs_both(float scale, float rescale) { return !((scale == 1 || scale == 0) && rescale == 0); }

/* Class conditioning pieces that need no model: classifier-free guidance and its rescale
 * against hand-computed values; train.cond_drop is a pure function of (seed, step, image)
 * with the asked-for rate (so resume and MPI ranks draw the same labels). */
#include <stdint.h>

#include "ddpm/guidance.h"
#include "ddpm/train.h"
#include "test.h"

static void test_guidance(void) {
    /* cond c = (1, 3), uncond u = (1, 1), S = 3: g = u + 3 (c - u) = (1, 7) */
    float c[2] = {1, 3}, u[2] = {1, 1}, out[2];
    guidance_combine(out, c, u, 3.0f, 0.0f, 2);
    T_OK(out[0] == 1 && out[1] == 7, "S = 3: (%g, %g), expected (1, 7)", out[0], out[1]);
    guidance_combine(out, c, u, 1.0f, 0.0f, 2);
    T_OK(out[0] == 1 && out[1] == 3, "S = 1 is the conditional prediction: (%g, %g)", out[0], out[1]);
    guidance_combine(out, c, u, 0.0f, 0.0f, 2);
    T_OK(out[0] == 1 && out[1] == 1, "S = 0 is the unconditional prediction: (%g, %g)", out[0], out[1]);
    /* rescale: std(c) = 1, std(g) = 3 (population std of (1, 7)); phi = 1: g / 3 = (1/3, 7/3);
     * phi = 0.5: g * (0.5/3 + 0.5) = g * 2/3 = (2/3, 14/3) */
    guidance_combine(out, c, u, 3.0f, 1.0f, 2);
    T_NEAR(out[0], 1.0 / 3, 1e-6, "phi = 1, element 0 (1/3)");
    T_NEAR(out[1], 7.0 / 3, 1e-6, "phi = 1, element 1 (7/3)");
    guidance_combine(out, c, u, 3.0f, 0.5f, 2);
    T_NEAR(out[0], 2.0 / 3, 1e-6, "phi = 0.5, element 0 (2/3)");
    T_NEAR(out[1], 14.0 / 3, 1e-6, "phi = 0.5, element 1 (14/3)");
    /* in place on cond, as the sampler may call it */
    float c2[2] = {1, 3};
    guidance_combine(c2, c2, u, 3.0f, 0.5f, 2);
    T_NEAR(c2[1], 14.0 / 3, 1e-6, "in place on cond gives the same");
}

static void test_cond_drop(void) {
    int n = 0, same = 1;
    for (uint64_t step = 0; step < 100; step++)
        for (uint64_t g = 0; g < 100; g++) {
            int d = train_cond_dropped(7, step, g, 0.1f);
            n += d;
            same &= d == train_cond_dropped(7, step, g, 0.1f);
        }
    /* 10000 Bernoulli(0.1) draws: mean 1000, sd 30 */
    T_OK(n > 850 && n < 1150, "cond_drop 0.1: %d of 10000 labels dropped (expected 1000 +- 90)", n);
    T_OK(same, "the draw is a pure function of (seed, step, image)");
    int zero = 0, one = 0, diff = 0;
    for (uint64_t g = 0; g < 1000; g++) {
        zero += train_cond_dropped(7, 3, g, 0.0f);
        one += train_cond_dropped(7, 3, g, 1.0f);
        diff += train_cond_dropped(7, 3, g, 0.5f) != train_cond_dropped(8, 3, g, 0.5f);
    }
    T_OK(zero == 0 && one == 1000, "p = 0 drops none (%d), p = 1 drops all (%d)", zero, one);
    T_OK(diff > 300, "another seed draws other labels (%d of 1000 differ)", diff);
}

int main(void) {
    printf("guidance\n");
    test_guidance();
    printf("cond_drop\n");
    test_cond_drop();
    return t_done();
}

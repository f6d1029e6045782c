#include "ddpm/plot.h"

#include <math.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/image.h"

enum { PW = 640, PH = 400, M = 30 };

/* A filled square of half-width r at (x, y). */
static void dot(uint8_t *pix, int x, int y, int r, const uint8_t *c) {
    for (int dy = -r + 1; dy <= r - 1; dy++)
        for (int dx = -r + 1; dx <= r - 1; dx++) {
            int X = x + dx, Y = y + dy;
            if (X >= 0 && X < PW && Y >= 0 && Y < PH) memcpy(&pix[(Y * PW + X) * 3], c, 3);
        }
}

int plot_png(const char *path, const PlotSeries *s, int ns, double ymin, double ymax, int logy) {
    static const uint8_t col[6][3] = {{31, 119, 180}, {214, 39, 40}, {44, 160, 44}, {255, 127, 14}, {148, 103, 189}, {0, 0, 0}};
    uint8_t *pix = xmalloc(PW * PH * 3);
    memset(pix, 255, PW * PH * 3);
    for (int g = 0; g <= 10; g++) {
        int y = M + (PH - 2 * M) * g / 10, x = M + (PW - 2 * M) * g / 10, c = g % 5 ? 225 : 170;
        for (int i = M; i <= PW - M; i++) memset(&pix[(y * PW + i) * 3], c, 3);
        for (int j = M; j <= PH - M; j++) memset(&pix[(j * PW + x) * 3], c, 3);
    }
    double xmin = INFINITY, xmax = -INFINITY;
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < s[k].n; i++) xmin = fmin(xmin, s[k].x[i]), xmax = fmax(xmax, s[k].x[i]);
    if (!(xmax > xmin)) xmax = xmin + 1;
    double y0 = logy ? log(ymin) : ymin, y1 = logy ? log(ymax) : ymax;
    if (!(y1 > y0)) y1 = y0 + 1;
    for (int k = 0; k < ns; k++) {
        int px = -1, py = -1;
        for (int i = 0; i < s[k].n; i++) {
            double yv = logy ? log(fmax(s[k].y[i], 1e-300)) : s[k].y[i];
            int x = M + (int)lround((s[k].x[i] - xmin) / (xmax - xmin) * (PW - 2 * M));
            int y = PH - M - (int)lround((fmin(fmax(yv, y0), y1) - y0) / (y1 - y0) * (PH - 2 * M));
            if (px < 0) px = x, py = y;
            int steps = abs(x - px) > abs(y - py) ? abs(x - px) : abs(y - py);
            for (int j = 0; j <= steps; j++) {
                int X = steps ? px + (x - px) * j / steps : x, Y = steps ? py + (y - py) * j / steps : y;
                dot(pix, X, Y, s[k].thick, col[k % 6]);
            }
            px = x, py = y;
        }
    }
    int rc = image_write_png(path, pix, PW, PH, 3);
    free(pix);
    return rc;
}

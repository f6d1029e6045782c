/* plot: line charts as PNG, without text (the caller prints what the axes are). */
#ifndef DDPM_PLOT_H
#define DDPM_PLOT_H

typedef struct {
    const double *x, *y;
    int n;
    int thick;       /* line half-width in pixels (1 or 2) */
} PlotSeries;

/* 640x400 canvas, light grid (10 divisions), series colors blue, red, green, orange...
 * y axis from ymin (bottom) to ymax (top), logarithmic when logy (values must be > 0).
 * x axis spans the data. Atomic write; ERUNTIME on failure. */
int plot_png(const char *path, const PlotSeries *s, int ns, double ymin, double ymax, int logy);

#endif

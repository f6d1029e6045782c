/* draw: every picture with words in it, through Cairo (libcairo2-dev) with a fontconfig font
 * (fonts-dejavu-core): line plots with axes, tick values, axis names, a title and a legend;
 * image grids and strips with captions. The caller says whether it wants text (captions, or
 * none; DrawPlot.bare: the commands' --no-labels); when no font is found this module prints
 * one warning and writes the same pictures without text (never an error). Every write is
 * atomic (temp + fsync + rename). */
#ifndef DDPM_DRAW_H
#define DDPM_DRAW_H

/* 1 when text can be drawn: a real font is found (the first call probes for it and warns
 * once on stderr when there is none). */
int draw_labels(void);

typedef struct {
    const char *name;     /* legend entry (NULL: not in the legend) */
    const double *x, *y;  /* n points; a NaN y (or <= 0 on a log axis) breaks the line */
    int n;
    int color;            /* palette index: blue, red, green, orange, purple, brown, ... */
    double width;         /* line width in pixels (0 = 2) */
    int faint;            /* drawn thin and pale, e.g. the raw loss under its smoothed curve */
    int markers;          /* a dot at every point (sparse measurements) */
} DrawSeries;

typedef struct {
    int w, h;                        /* canvas, 0 = 800 x 500 */
    const char *title, *xlabel, *ylabel;
    int logx, logy;                  /* logarithmic axis with decade ticks (values must be > 0) */
    double xmin, xmax, ymin, ymax;   /* NaN = from the data (linear axes end on a tick) */
    int bare;                        /* no text at all (--no-labels): lines, axes and ticks only */
} DrawPlot;

/* A plot with every field of p at its default (NaN ranges, 800 x 500, linear, no title or
 * axis names; tick values drawn). */
DrawPlot draw_plot_defaults(void);
/* Line plot of ns series. ERUNTIME on I/O failure. */
int draw_plot_png(const char *path, const DrawPlot *p, const DrawSeries *s, int ns);

typedef struct {
    const char *title;         /* one line above the grid, e.g. "step 1500 | ddim, 20 steps" */
    const char *const *cell;   /* n captions, one under each image (e.g. "t = 250"), or NULL */
    const char *const *row;    /* one label per row, left of it (e.g. a class name), or NULL */
    const char *const *col;    /* one label per column above the first row (e.g. "original",
                                * "masked", "result"), or NULL */
} DrawCaptions;

/* n float images (n,h,w,c) in [-1,1], c = 1 or 3, in rows of `cols` (0 = ~sqrt(n)).
 * Bare (cap NULL, as for --no-labels, or no font): exactly image_grid_u8's layout with
 * `gap` black pixels (0 = a plain strip), c channels. Labelled: white background, RGB, each image scaled
 * up by a whole factor to at least 64 pixels (nearest neighbour, pixels stay sharp) with the
 * captions around it. ERUNTIME on I/O failure. */
int draw_grid_png(const char *path, const float *imgs, int n, int h, int w, int c, int cols, int gap,
                  const DrawCaptions *cap);

/* Captions of a trajectory strip: `frames` frames over K reverse steps, frame f taken after
 * step ceil(f*K/(frames-1)) as src/sampler.c records them: "noise", "step 13/50", ...,
 * "step 50/50". One malloc'd block (the array and its strings): free() it. */
char **draw_trajectory_captions(int frames, int K);

#endif

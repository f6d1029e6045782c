/* draw: line plots and captioned image grids through Cairo. The only file that calls Cairo. */
#include "ddpm/draw.h"

#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/image.h"

#define FONT "DejaVu Sans"
enum { MIN_CELL = 64, MAX_SIDE = 32000 };
#define MAX_AREA (64L << 20) /* pixels of a captioned grid: 256 MB of RGB24 */

/* Whether fontconfig finds a font: a fact of the machine, probed once per process.
 * -1 not probed yet, 0 none, 1 found. */
static int g_font = -1;

/* At exit: hand Cairo's font caches and fontconfig's configuration back, so that leak
 * checkers (make check) see a clean exit instead of fontconfig's cached patterns. */
static void release_fonts(void) {
    cairo_debug_reset_static_data();
    FcFini();
}

int draw_labels(void) {
    if (g_font < 0) {
        atexit(release_fonts);
        /* Cairo falls back to its built-in stroke font ("twin", a user font) when fontconfig
         * finds nothing; a real font comes back as a FreeType scaled font. */
        cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1);
        cairo_t *cr = cairo_create(s);
        cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
        cairo_scaled_font_t *sf = cairo_get_scaled_font(cr);
        g_font = cairo_status(cr) == CAIRO_STATUS_SUCCESS && cairo_scaled_font_status(sf) == CAIRO_STATUS_SUCCESS &&
                 cairo_scaled_font_get_type(sf) == CAIRO_FONT_TYPE_FT;
        cairo_destroy(cr);
        cairo_surface_destroy(s);
        if (!g_font)
            fprintf(stderr, "ddpm: warning: no font found through fontconfig (install fonts-dejavu-core); "
                            "pictures are written without labels\n");
    }
    return g_font;
}

/* ---- output ---- */

static cairo_status_t png_write(void *ctx, const unsigned char *data, unsigned int n) {
    return fwrite(data, 1, n, ((AtomicFile *)ctx)->fp) == n ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

static int surface_write(cairo_surface_t *s, const char *path) {
    cairo_surface_flush(s);
    if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS)
        return err_set(DDPM_ERUNTIME, "%s: cannot draw: %s", path, cairo_status_to_string(cairo_surface_status(s)));
    AtomicFile af;
    int rc = atomic_open(&af, path);
    if (rc) return rc;
    cairo_status_t st = cairo_surface_write_to_png_stream(s, png_write, &af);
    if (st != CAIRO_STATUS_SUCCESS) {
        atomic_abort(&af);
        return err_set(DDPM_ERUNTIME, "%s: cannot write the PNG: %s", path, cairo_status_to_string(st));
    }
    return atomic_commit(&af);
}

/* ---- text ---- */

static void font(cairo_t *cr, double size, int bold) {
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
}

static double text_w(cairo_t *cr, const char *s) {
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    return e.x_advance;
}

/* Draw s with its anchor at (x, y): ax 0/0.5/1 = left/center/right; ay 0/0.5/1 = top/middle/bottom
 * of the font's cap height. */
static void text(cairo_t *cr, double x, double y, const char *s, double ax, double ay) {
    cairo_font_extents_t fe;
    cairo_font_extents(cr, &fe);
    double cap = fe.ascent * 0.78; /* DejaVu's cap height is ~0.73 em; ascent ~0.93 em */
    cairo_move_to(cr, x - ax * text_w(cr, s), y + (1 - ay) * cap);
    cairo_show_text(cr, s);
}

/* ---- plots ---- */

static const double PALETTE[][3] = {{0.12, 0.47, 0.71}, {0.84, 0.15, 0.16}, {0.17, 0.63, 0.17}, {1.00, 0.50, 0.05},
                                    {0.58, 0.40, 0.74}, {0.55, 0.34, 0.29}, {0.89, 0.47, 0.76}, {0.50, 0.50, 0.50},
                                    {0.74, 0.74, 0.13}, {0.09, 0.75, 0.81}};
#define N_PALETTE (int)(sizeof PALETTE / sizeof PALETTE[0])

typedef struct {
    double lo, hi;  /* data range shown */
    int log;
    double p0, p1;  /* pixel positions of lo and hi */
} Axis;

static double ax_f(const Axis *a, double v) { return a->log ? log10(v) : v; }
static double ax_px(const Axis *a, double v) {
    return a->p0 + (ax_f(a, v) - ax_f(a, a->lo)) / (ax_f(a, a->hi) - ax_f(a, a->lo)) * (a->p1 - a->p0);
}
static int usable(const Axis *a, double v) { return isfinite(v) && (!a->log || v > 0); }

static double nice_step(double range, int target) {
    double raw = range / (target > 1 ? target : 1), p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/* Data range of one coordinate over all series (only values the axis can show). */
static void data_range(const DrawSeries *s, int ns, int use_x, const Axis *a, double *lo, double *hi) {
    *lo = INFINITY, *hi = -INFINITY;
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < s[k].n; i++) {
            double v = use_x ? s[k].x[i] : s[k].y[i], o = use_x ? s[k].y[i] : s[k].x[i];
            if (usable(a, v) && isfinite(o)) *lo = fmin(*lo, v), *hi = fmax(*hi, v);
        }
}

/* Fill in the range: given bounds stay; log axes extend by 5% (in log), linear ones to the
 * next tick when snap (x: steps 0..1600), else by 4% (y: no point sits on the frame). */
static void axis_range(Axis *a, double lo, double hi, double want_lo, double want_hi, int target, int snap) {
    if (!isfinite(lo)) lo = a->log ? 0.1 : 0, hi = a->log ? 1 : 1;
    if (a->log) {
        if (!(hi > lo)) lo /= 2, hi *= 2;
        double pad = pow(hi / lo, 0.05);
        a->lo = isnan(want_lo) ? lo / pad : want_lo, a->hi = isnan(want_hi) ? hi * pad : want_hi;
        if (!(a->lo > 0)) a->lo = lo / pad;
        if (!(a->hi > a->lo)) a->hi = a->lo * 10;
    } else {
        if (!(hi > lo)) lo -= fabs(lo) > 0 ? fabs(lo) * 0.1 : 1, hi += fabs(hi) > 0 ? fabs(hi) * 0.1 : 1;
        double st = nice_step(hi - lo, target), pad = 0.04 * (hi - lo);
        a->lo = !isnan(want_lo) ? want_lo : snap ? floor(lo / st + 1e-9) * st : lo - pad;
        a->hi = !isnan(want_hi) ? want_hi : snap ? ceil(hi / st - 1e-9) * st : hi + pad;
        if (!(a->hi > a->lo)) a->hi = a->lo + 1;
    }
}

typedef struct {
    double v;
    int major;      /* gridline dark, tick long */
    char label[32]; /* "" = unlabelled */
} Tick;

static void fmt_num(char *buf, size_t n, double v, double step) {
    if (v != 0 && (fabs(v) >= 1e6 || fabs(v) < 1e-4)) { /* 1e6, 5e-5, 2.5e7 */
        int ex = (int)floor(log10(fabs(v)));
        double m = v / pow(10, ex);
        if (fabs(m) >= 9.95) m /= 10, ex++;
        char ms[16];
        snprintf(ms, sizeof ms, "%.1f", m);
        size_t l = strlen(ms);
        if (l >= 2 && !strcmp(ms + l - 2, ".0")) ms[l - 2] = 0;
        snprintf(buf, n, "%se%d", ms, ex);
        return;
    }
    int dec = step > 0 ? (int)ceil(-log10(step) - 1e-9) : 0;
    if (dec < 0) dec = 0;
    if (dec > 6) dec = 6;
    snprintf(buf, n, "%.*f", dec, fabs(v) < step * 1e-6 ? 0.0 : v);
}

/* Ticks of an axis whose pixel span (p0, p1) is set. A log axis has a tick at every m*10^k;
 * decades are labelled, then the minor values in the order 2 5, 3, 4, 6 8, 7 9 as long as
 * labelled ticks stay at least min_gap pixels apart. */
static int axis_ticks(const Axis *a, Tick *t, int max, int target, double min_gap) {
    int n = 0;
    if (!a->log) {
        double st = nice_step(a->hi - a->lo, target);
        double first = ceil(a->lo / st - 1e-9);
        for (double v = first * st; v <= a->hi + st * 1e-9 && n < max; v = (first + n) * st) {
            t[n].v = v, t[n].major = 1;
            fmt_num(t[n].label, sizeof t[n].label, v, st);
            n++;
        }
        return n;
    }
    double decades = log10(a->hi / a->lo);
    int kmin = (int)floor(log10(a->lo)), kmax = (int)ceil(log10(a->hi));
    int every = decades > 12 ? (int)ceil(decades / 8) : 1;
    for (int k = kmin; k <= kmax; k++)
        for (int m = 1; m <= 9; m++) {
            double v = m * pow(10, k);
            if (v < a->lo * (1 - 1e-9) || v > a->hi * (1 + 1e-9) || n >= max) continue;
            if (m > 1 && decades > 6) continue;
            t[n].v = v, t[n].major = m == 1;
            t[n].label[0] = 0;
            if (m == 1 && k % every == 0) fmt_num(t[n].label, sizeof t[n].label, v, v);
            n++;
        }
    static const int LEVEL[10] = {0, 0, 1, 2, 3, 1, 4, 5, 4, 5}; /* mantissa -> level */
    for (int level = 1; level <= 5; level++) {
        double last = -1e30, gap = 1e30;
        for (int i = 0; i < n; i++) {
            int m = (int)lround(t[i].v / pow(10, floor(log10(t[i].v) + 1e-9)));
            if (!(t[i].label[0] || (m >= 2 && m <= 9 && LEVEL[m] <= level))) continue;
            double px = ax_px(a, t[i].v);
            gap = fmin(gap, fabs(px - last)), last = px;
        }
        if (gap < min_gap) break;
        for (int i = 0; i < n; i++) {
            int m = (int)lround(t[i].v / pow(10, floor(log10(t[i].v) + 1e-9)));
            if (m >= 2 && m <= 9 && LEVEL[m] == level) fmt_num(t[i].label, sizeof t[i].label, t[i].v, t[i].v);
        }
    }
    return n;
}

DrawPlot draw_plot_defaults(void) {
    DrawPlot p = {0};
    p.xmin = p.xmax = p.ymin = p.ymax = NAN;
    return p;
}

static void set_color(cairo_t *cr, int idx, double alpha) {
    const double *c = PALETTE[((idx % N_PALETTE) + N_PALETTE) % N_PALETTE];
    cairo_set_source_rgba(cr, c[0], c[1], c[2], alpha);
}

/* How much of the drawn lines falls inside the box (legend placement): the lines are walked
 * in steps of about 3 pixels and every sample within 4 pixels of the box counts. */
static long ink_in(const DrawSeries *s, int ns, const Axis *ax, const Axis *ay, double x0, double y0, double x1, double y1) {
    long cnt = 0;
    for (int k = 0; k < ns; k++) {
        double qx = NAN, qy = NAN;
        for (int i = 0; i < s[k].n; i++) {
            if (!usable(ax, s[k].x[i]) || !usable(ay, s[k].y[i])) {
                qx = NAN;
                continue;
            }
            double px = ax_px(ax, s[k].x[i]), py = ax_px(ay, s[k].y[i]);
            if (isnan(qx)) qx = px, qy = py;
            int steps = 1 + (int)(hypot(px - qx, py - qy) / 3);
            if (steps > 4000) steps = 4000;
            for (int j = 1; j <= steps; j++) {
                double X = qx + (px - qx) * j / steps, Y = qy + (py - qy) * j / steps;
                cnt += X >= x0 - 4 && X <= x1 + 4 && Y >= y0 - 4 && Y <= y1 + 4;
            }
            qx = px, qy = py;
        }
    }
    return cnt;
}

int draw_plot_png(const char *path, const DrawPlot *p, const DrawSeries *s, int ns) {
    int W = p->w > 0 ? p->w : 800, H = p->h > 0 ? p->h : 500;
    if (W > MAX_SIDE || H > MAX_SIDE) return err_set(DDPM_EUSAGE, "%s: a %dx%d plot is too large (at most %d)", path, W, H, MAX_SIDE);
    int lab = !p->bare && draw_labels();
    cairo_surface_t *sf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
    cairo_t *cr = cairo_create(sf);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);

    double fs = H < 300 ? 10 : 12.5; /* tick and legend size; axis names and title a bit larger */
    Axis ax = {.log = p->logx}, ay = {.log = p->logy};
    double lo, hi;
    data_range(s, ns, 1, &ax, &lo, &hi);
    axis_range(&ax, lo, hi, p->xmin, p->xmax, W / 110, 1);
    data_range(s, ns, 0, &ay, &lo, &hi);
    axis_range(&ay, lo, hi, p->ymin, p->ymax, H / 70, 0);
    Tick xt[128], yt[128];
    int nxt = 0, nyt = 0;
    /* margins from the text they hold: the y tick labels (which depend only on the plot
     * area's height) set the left margin, the last x tick label the right one */
    double left = 16, right = 24, top = 16, bottom = 16;
    if (lab) {
        font(cr, fs, 0);
        top = p->title ? fs * 1.3 + 18 : 14;
        bottom = 8 + fs + 6 + (p->xlabel ? fs * 1.1 + 8 : 0) + 4;
    }
    ay.p0 = H - bottom, ay.p1 = top;
    nyt = axis_ticks(&ay, yt, 128, H / 70, fs * 1.8);
    if (lab) {
        double yw = 0;
        for (int i = 0; i < nyt; i++) yw = fmax(yw, text_w(cr, yt[i].label));
        left = 10 + (p->ylabel ? fs * 1.1 + 10 : 0) + yw + 8;
    }
    for (int pass = 0; pass < 2; pass++) { /* the right margin depends on the last x label */
        ax.p0 = left, ax.p1 = W - right;
        nxt = axis_ticks(&ax, xt, 128, W / 110, fs * 4.5);
        if (lab && nxt) right = fmax(24, text_w(cr, xt[nxt - 1].label) / 2 + 8);
    }
    double X0 = left, X1 = W - right, Y0 = top, Y1 = H - bottom; /* plot area */
    ax.p0 = X0, ax.p1 = X1, ay.p0 = Y1, ay.p1 = Y0;

    /* grid and ticks */
    cairo_set_line_width(cr, 1);
    for (int pass = 0; pass < 2; pass++) { /* minor gridlines under major ones */
        for (int i = 0; i < nxt + nyt; i++) {
            const Tick *t = i < nxt ? &xt[i] : &yt[i - nxt];
            if (t->major != pass) continue;
            double v = floor(ax_px(i < nxt ? &ax : &ay, t->v)) + 0.5;
            double g = t->major ? 0.82 : 0.92;
            cairo_set_source_rgb(cr, g, g, g);
            if (i < nxt) cairo_move_to(cr, v, Y0), cairo_line_to(cr, v, Y1);
            else cairo_move_to(cr, X0, v), cairo_line_to(cr, X1, v);
            cairo_stroke(cr);
        }
    }
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    cairo_rectangle(cr, floor(X0) + 0.5, floor(Y0) + 0.5, floor(X1) - floor(X0), floor(Y1) - floor(Y0));
    cairo_stroke(cr);
    for (int i = 0; i < nxt + nyt; i++) {
        const Tick *t = i < nxt ? &xt[i] : &yt[i - nxt];
        double v = floor(ax_px(i < nxt ? &ax : &ay, t->v)) + 0.5, len = t->major || t->label[0] ? 5 : 3;
        if (i < nxt) cairo_move_to(cr, v, floor(Y1) + 0.5), cairo_line_to(cr, v, floor(Y1) + 0.5 + len);
        else cairo_move_to(cr, floor(X0) + 0.5, v), cairo_line_to(cr, floor(X0) + 0.5 - len, v);
        cairo_stroke(cr);
    }

    /* series, clipped to the plot area */
    cairo_save(cr);
    cairo_rectangle(cr, X0 - 4, Y0 - 4, X1 - X0 + 8, Y1 - Y0 + 8); /* markers on the frame stay whole */
    cairo_clip(cr);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
    for (int pass = 0; pass < 2; pass++) /* faint series first, under the others */
        for (int k = 0; k < ns; k++) {
            if (!!s[k].faint != !pass) continue;
            set_color(cr, s[k].color, s[k].faint ? 0.5 : 1);
            cairo_set_line_width(cr, s[k].faint ? 1.2 : s[k].width > 0 ? s[k].width : 2);
            int pen = 0;
            for (int i = 0; i < s[k].n; i++) {
                if (!usable(&ax, s[k].x[i]) || !usable(&ay, s[k].y[i])) {
                    pen = 0;
                    continue;
                }
                double px = ax_px(&ax, s[k].x[i]), py = ax_px(&ay, s[k].y[i]);
                if (pen) cairo_line_to(cr, px, py);
                else cairo_move_to(cr, px, py), cairo_line_to(cr, px, py);
                pen = 1;
            }
            cairo_stroke(cr);
            if (s[k].markers)
                for (int i = 0; i < s[k].n; i++)
                    if (usable(&ax, s[k].x[i]) && usable(&ay, s[k].y[i])) {
                        cairo_arc(cr, ax_px(&ax, s[k].x[i]), ax_px(&ay, s[k].y[i]), 3.5, 0, 2 * M_PI);
                        cairo_fill(cr);
                    }
        }
    cairo_restore(cr);

    if (lab) {
        cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
        font(cr, fs, 0);
        for (int i = 0; i < nxt; i++)
            if (xt[i].label[0]) text(cr, ax_px(&ax, xt[i].v), Y1 + 8, xt[i].label, 0.5, 0);
        for (int i = 0; i < nyt; i++)
            if (yt[i].label[0]) text(cr, X0 - 8, ax_px(&ay, yt[i].v), yt[i].label, 1, 0.5);
        font(cr, fs * 1.1, 0);
        if (p->xlabel) text(cr, (X0 + X1) / 2, H - 8, p->xlabel, 0.5, 1);
        if (p->ylabel) {
            cairo_save(cr);
            cairo_translate(cr, 10, (Y0 + Y1) / 2);
            cairo_rotate(cr, -M_PI / 2);
            text(cr, 0, 0, p->ylabel, 0.5, 0);
            cairo_restore(cr);
        }
        if (p->title) {
            font(cr, fs * 1.3, 1);
            text(cr, (X0 + X1) / 2, 10, p->title, 0.5, 0);
        }
        /* legend in the corner of the plot area with the fewest points under it */
        int nl = 0;
        double lw = 0;
        font(cr, fs, 0);
        for (int k = 0; k < ns; k++)
            if (s[k].name) nl++, lw = fmax(lw, text_w(cr, s[k].name));
        if (nl) {
            double rowh = fs * 1.5, bw = lw + 42, bh = nl * rowh + 10, best_x = 0, best_y = 0;
            long best = -1;
            const double cx[4] = {X1 - 10 - bw, X0 + 10, X1 - 10 - bw, X0 + 10}, cy[4] = {Y0 + 10, Y0 + 10, Y1 - 10 - bh, Y1 - 10 - bh};
            for (int q = 0; q < 4; q++) {
                long c = ink_in(s, ns, &ax, &ay, cx[q], cy[q], cx[q] + bw, cy[q] + bh);
                if (best < 0 || c < best) best = c, best_x = cx[q], best_y = cy[q];
            }
            cairo_rectangle(cr, floor(best_x) + 0.5, floor(best_y) + 0.5, floor(bw), floor(bh));
            cairo_set_source_rgba(cr, 1, 1, 1, 0.88);
            cairo_fill_preserve(cr);
            cairo_set_source_rgb(cr, 0.7, 0.7, 0.7);
            cairo_set_line_width(cr, 1);
            cairo_stroke(cr);
            int r = 0;
            for (int k = 0; k < ns; k++) {
                if (!s[k].name) continue;
                double y = best_y + 5 + rowh * (r++ + 0.5);
                set_color(cr, s[k].color, s[k].faint ? 0.45 : 1);
                cairo_set_line_width(cr, s[k].faint ? 1.5 : s[k].width > 0 ? s[k].width : 2);
                cairo_move_to(cr, best_x + 8, y), cairo_line_to(cr, best_x + 30, y);
                cairo_stroke(cr);
                if (s[k].markers) cairo_arc(cr, best_x + 19, y, 3.5, 0, 2 * M_PI), cairo_fill(cr);
                cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
                text(cr, best_x + 36, y, s[k].name, 0, 0.5);
            }
        }
    }
    cairo_destroy(cr);
    int rc = surface_write(sf, path);
    cairo_surface_destroy(sf);
    return rc;
}

/* ---- captioned grids ---- */

/* Largest font size <= size (down to 7) at which s fits in width. */
static double fit_font(cairo_t *cr, const char *s, double width, double size, int bold) {
    font(cr, size, bold);
    double w = text_w(cr, s);
    if (w > width && w > 0) size = fmax(7, size * width / w);
    font(cr, size, bold);
    return size;
}

int draw_grid_png(const char *path, const float *imgs, int n, int h, int w, int c, int cols, int gap,
                  const DrawCaptions *cap) {
    if (n <= 0 || h <= 0 || w <= 0 || (c != 1 && c != 3))
        return err_set(DDPM_ERUNTIME, "%s: cannot draw a grid of %d images of %dx%dx%d", path, n, h, w, c);
    if (cols <= 0) cols = (int)ceil(sqrt((double)n));
    if (cols > n) cols = n;
    int rows = (n + cols - 1) / cols;
    int scale = (MIN_CELL + (w > h ? w : h) - 1) / (w > h ? w : h);
    if (scale < 1) scale = 1;
    const double fs = 12, tfs = 13.5;
    int g = 6, cw = w * scale, ch = h * scale;
    int cap_h = cap && cap->cell ? (int)(fs * 1.6) : 0, title_h = cap && cap->title ? (int)(tfs * 2.2) : 0;
    int head_h = cap && cap->col ? (int)(fs * 1.7) : 0; /* column heads sit under the title */
    title_h += head_h;
    /* labelled canvas size; too large for Cairo (side) or for memory (area, 4 bytes a pixel):
     * first drop the scaling, then the labels */
    long Wl = 0, Hl = 0;
    int fits = 0;
    for (int tries = 0; tries < 2 && !fits; tries++) {
        Wl = (long)cols * (cw + g) + g + 200, Hl = title_h + (long)rows * (ch + cap_h + g) + g;
        fits = Wl <= MAX_SIDE && Hl <= MAX_SIDE && Wl * Hl <= MAX_AREA;
        if (!fits) scale = 1, cw = w, ch = h;
    }
    if (!cap || !fits || !draw_labels()) {
        int W, H;
        uint8_t *grid = image_grid_u8(imgs, n, h, w, c, cols, gap, 0, &W, &H);
        if (!grid) return err_set(DDPM_ERUNTIME, "%s: out of memory for a grid of %d images", path, n);
        int rc = image_write_png(path, grid, W, H, c);
        free(grid);
        return rc;
    }
    /* measure the row labels and the title to size the canvas */
    cairo_surface_t *probe = cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1);
    cairo_t *cr = cairo_create(probe);
    double row_w = 0, title_w = 0;
    font(cr, fs, 0);
    if (cap->row)
        for (int r = 0; r < rows; r++)
            if (cap->row[r]) row_w = fmax(row_w, text_w(cr, cap->row[r]));
    if (row_w > 0) row_w += 10;
    font(cr, tfs, 1);
    if (cap->title) title_w = text_w(cr, cap->title) + 16;
    cairo_destroy(cr);
    cairo_surface_destroy(probe);
    int gridw = (int)ceil(row_w) + cols * (cw + g) + g;
    int W = gridw > title_w ? gridw : (int)ceil(title_w), H = title_h + rows * (ch + cap_h + g) + g;
    int ox = (W - gridw) / 2 + (int)ceil(row_w); /* x of the first column's gap */

    cairo_surface_t *sf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
    cr = cairo_create(sf);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_surface_flush(sf);
    uint8_t *data = cairo_image_surface_get_data(sf);
    int stride = cairo_image_surface_get_stride(sf);
    for (int i = 0; i < n; i++) {
        int x0 = ox + g + (i % cols) * (cw + g), y0 = title_h + g + (i / cols) * (ch + cap_h + g);
        const float *src = imgs + (size_t)i * h * w * c;
        for (int y = 0; y < ch; y++) {
            uint32_t *dst = (uint32_t *)(data + (size_t)(y0 + y) * stride) + x0;
            const float *row = src + (size_t)(y / scale) * w * c;
            for (int x = 0; x < cw; x++) {
                const float *p = row + (size_t)(x / scale) * c;
                uint32_t r = image_to_u8(p[0]), gg = c == 3 ? image_to_u8(p[1]) : r, b = c == 3 ? image_to_u8(p[2]) : r;
                dst[x] = r << 16 | gg << 8 | b; /* CAIRO_FORMAT_RGB24: native-endian 0x00RRGGBB */
            }
        }
    }
    cairo_surface_mark_dirty(sf);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    if (cap->title) {
        font(cr, tfs, 1);
        text(cr, W / 2.0, (title_h - head_h) / 2.0 + 2, cap->title, 0.5, 0.5);
    }
    for (int r = 0; cap->row && r < rows; r++)
        if (cap->row[r]) {
            font(cr, fs, 0);
            text(cr, ox - 4, title_h + g + r * (ch + cap_h + g) + ch / 2.0, cap->row[r], 1, 0.5);
        }
    for (int j = 0; cap->col && j < cols; j++)
        if (cap->col[j]) {
            fit_font(cr, cap->col[j], cw + g - 2, fs, 0);
            text(cr, ox + g + j * (cw + g) + cw / 2.0, title_h - fs * 0.85 + 1, cap->col[j], 0.5, 0.5);
        }
    for (int i = 0; cap->cell && i < n; i++)
        if (cap->cell[i]) {
            int x0 = ox + g + (i % cols) * (cw + g), y0 = title_h + g + (i / cols) * (ch + cap_h + g) + ch;
            fit_font(cr, cap->cell[i], cw + g - 2, fs, 0);
            text(cr, x0 + cw / 2.0, y0 + cap_h / 2.0 + 1, cap->cell[i], 0.5, 0.5);
        }
    cairo_destroy(cr);
    int rc = surface_write(sf, path);
    cairo_surface_destroy(sf);
    return rc;
}

char **draw_trajectory_captions(int frames, int K) {
    enum { LEN = 32 };
    char **cap = xmalloc((sizeof(char *) + LEN) * (size_t)frames), *text = (char *)(cap + frames);
    for (int f = 0; f < frames; f++) {
        int done = frames > 1 ? (int)(((long)f * K + frames - 2) / (frames - 1)) : K;
        cap[f] = text + (size_t)f * LEN;
        if (f == 0 && frames > 1) snprintf(cap[f], LEN, "noise");
        else snprintf(cap[f], LEN, "step %d/%d", done, K);
    }
    return cap;
}

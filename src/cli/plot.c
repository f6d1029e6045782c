/* ddpm plot CSV: a line plot of a CSV's columns, so scripts draw through the same module
 * (src/draw.c) as the loss curve and the schedule plot. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm plot CSV [-o OUT.png] [options]\n"
            "\n"
            "Draws the columns of CSV as lines against one x column and writes a PNG, with tick\n"
            "values, axis names, a title and a legend (the scripts in scripts/ draw their\n"
            "comparisons this way).\n"
            "\n"
            "CSV format:\n"
            "  the first line names the columns, e.g.  steps,ddpm,ddim,dpm++\n"
            "  every other line holds one number per column (comma separated);\n"
            "  an empty cell, 'nan' or '-' means no point there (series may be measured at\n"
            "  different x: each line joins the points its series has);\n"
            "  lines starting with '#' and blank lines are skipped; names may be \"quoted\".\n"
            "  The x column is the first unless --x names another; every other numeric column\n"
            "  is a series named by its header (--y picks some). Or a long table, one row per\n"
            "  measurement: --by COLUMN makes one series per distinct value of COLUMN (text\n"
            "  allowed there) of the --y column, points sorted by x. Text cells are fine in\n"
            "  columns that are not drawn. Series with at most 50 points get a marker at each.\n"
            "\n"
            "options:\n"
            "  -o, --out FILE     output PNG (default: CSV with .png for its extension)\n"
            "  --x NAME           the x column (default: the first)\n"
            "  --y NAME,NAME..    the series to draw (default: every numeric column but x)\n"
            "  --by NAME          one series per value of column NAME (with one --y column)\n"
            "  --logx, --logy     logarithmic axis with decade ticks (values <= 0 are left out)\n"
            "  --title TEXT       title above the plot\n"
            "  --xlabel TEXT      x axis name (default: the x column's name)\n"
            "  --ylabel TEXT      y axis name (default: the series' name when there is one)\n"
            "  --ymin V, --ymax V y range (default: from the data)\n"
            "  --size WxH         canvas in pixels (default 800x500)\n"
            "  --markers          a marker at each point whatever the count; --no-markers: never\n"
            "  --no-labels        no text at all (lines, grid and ticks only)\n"
            "  -h, --help         this help\n"
            "\n"
            "example:  ddpm plot fd.csv --x steps --logx --title 'FD vs sampling steps' --ylabel FD -o fd.png\n");
}

typedef struct {
    int ncol, nrow, cap;
    char **name;
    double *v;   /* nrow x ncol; NaN for an empty or text cell */
    char **txt;  /* nrow x ncol; the text of a cell that is not a number, else NULL */
    int *line;   /* nrow: line number in the file */
} Csv;

static void csv_free(Csv *t) {
    for (int j = 0; j < t->ncol; j++) free(t->name[j]);
    for (size_t i = 0; t->txt && i < (size_t)t->nrow * t->ncol; i++) free(t->txt[i]);
    free(t->name);
    free(t->v);
    free(t->txt);
    free(t->line);
}

/* Trim spaces (and \r) and one pair of double quotes, in place. */
static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') s[n - 1] = 0, s++;
    return s;
}

/* Cut line at its commas; *f (grown as needed, capacity *cap) points at the fields. */
static int split(char *line, char ***f, int *cap) {
    int n = 1;
    for (char *p = line; *p; p++) n += *p == ',';
    if (n > *cap) {
        *cap = n, *f = realloc(*f, sizeof(char *) * n);
        CHECK(*f, "out of memory");
    }
    char *p = line;
    for (int j = 0; j < n; j++) {
        char *c = strchr(p, ',');
        if (c) *c = 0;
        (*f)[j] = p;
        p = c ? c + 1 : p;
    }
    return n;
}

static int csv_read(Csv *t, const char *path) {
    memset(t, 0, sizeof *t);
    char *text;
    size_t size;
    int rc = file_read_all(path, &text, &size);
    if (rc) return rc;
    char **f = NULL;
    int lineno = 0, maxf = 0;
    rc = DDPM_OK;
    char *start = text;
    if (size >= 3 && !memcmp(start, "\xEF\xBB\xBF", 3)) start += 3; /* a UTF-8 byte order mark */
    for (char *line = start, *next; line && !rc; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        lineno++;
        char *l = trim(line);
        if (!*l || *l == '#') continue;
        int n = split(l, &f, &maxf);
        if (!t->name) {
            t->ncol = n;
            t->name = xcalloc(n, sizeof(char *));
            for (int j = 0; j < n; j++) {
                char *s = trim(f[j]);
                t->name[j] = xstrdup(*s ? s : "?");
            }
            continue;
        }
        if (n != t->ncol) {
            rc = err_set(DDPM_ERUNTIME, "%s:%d: %d cells, but the header names %d columns (see ddpm plot --help)", path, lineno, n, t->ncol);
            break;
        }
        if (t->nrow == t->cap) {
            t->cap = t->cap ? 2 * t->cap : 64;
            t->v = realloc(t->v, sizeof(double) * t->cap * t->ncol);
            t->txt = realloc(t->txt, sizeof(char *) * t->cap * t->ncol);
            t->line = realloc(t->line, sizeof(int) * t->cap);
            CHECK(t->v && t->txt && t->line, "out of memory");
        }
        t->line[t->nrow] = lineno;
        for (int j = 0; j < n; j++) {
            char *s = trim(f[j]), *end;
            size_t at = (size_t)t->nrow * t->ncol + j;
            t->v[at] = NAN, t->txt[at] = NULL;
            if (*s && strcmp(s, "-") && strcasecmp(s, "nan")) {
                double v = strtod(s, &end);
                if (*end || end == s) t->txt[at] = xstrdup(s); /* fine unless the column is plotted */
                else t->v[at] = v;
            }
        }
        t->nrow++;
    }
    free(f);
    free(text);
    if (!rc && !t->name) rc = err_set(DDPM_ERUNTIME, "%s: empty; the first line must name the columns (see ddpm plot --help)", path);
    if (!rc && t->ncol < 2) rc = err_set(DDPM_ERUNTIME, "%s: needs an x column and at least one series column, found %d column", path, t->ncol);
    if (!rc && t->nrow == 0) rc = err_set(DDPM_ERUNTIME, "%s: no rows of numbers under the header", path);
    if (rc) csv_free(t);
    return rc;
}

/* Column j must hold numbers (or gaps): ERUNTIME naming the first text cell. */
static int col_numeric(const Csv *t, int j, const char *path) {
    for (int i = 0; i < t->nrow; i++)
        if (t->txt[(size_t)i * t->ncol + j])
            return err_set(DDPM_ERUNTIME, "%s:%d: column \"%s\": '%s' is not a number (leave the cell empty for a gap)", path,
                           t->line[i], t->name[j], t->txt[(size_t)i * t->ncol + j]);
    return DDPM_OK;
}

/* The text by which row i groups under --by column j. */
static void group_key(const Csv *t, int i, int j, char *buf, size_t n) {
    const char *s = t->txt[(size_t)i * t->ncol + j];
    double v = t->v[(size_t)i * t->ncol + j];
    if (s) snprintf(buf, n, "%s", s);
    else if (isnan(v)) snprintf(buf, n, "(empty)");
    else snprintf(buf, n, "%g", v);
}

static int col_index(const Csv *t, const char *name) {
    for (int j = 0; j < t->ncol; j++)
        if (!strcmp(t->name[j], name)) return j;
    return -1;
}

/* "a, b, c" of the column names, for error messages. */
static void col_list(const Csv *t, char *buf, size_t n) {
    buf[0] = 0;
    for (int j = 0; j < t->ncol; j++) {
        size_t l = strlen(buf);
        snprintf(buf + l, n - l, "%s%s", j ? ", " : "", t->name[j]);
    }
}

typedef struct {
    const char *out, *xname, *ynames, *byname;
    DrawPlot p;
    int markers; /* -1: for series of at most 50 points */
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    DrawPlot *p = &a->p;
    float fv;
    int rc;
    switch (o) {
    case 'o': a->out = v; return 0;
    case 'x': a->xname = v; return 0;
    case 'y': a->ynames = v; return 0;
    case 'g': a->byname = v; return 0;
    case 'X': p->logx = 1; return 0;
    case 'Y': p->logy = 1; return 0;
    case 't': p->title = v; return 0;
    case 'a': p->xlabel = v; return 0;
    case 'b': p->ylabel = v; return 0;
    case 'm': if ((rc = cli_float("plot", "--ymin", v, -1e30, 1e30, &fv))) return rc; p->ymin = fv; return 0;
    case 'M': if ((rc = cli_float("plot", "--ymax", v, -1e30, 1e30, &fv))) return rc; p->ymax = fv; return 0;
    case 's': {
        char tail;
        if (sscanf(v, "%dx%d%c", &p->w, &p->h, &tail) != 2 || p->w < 100 || p->h < 80 || p->w > 8000 || p->h > 8000)
            return cli_usage_error("plot", "--size '%s': use WxH, e.g. 800x500 (100x80 .. 8000x8000)", v);
        return 0;
    }
    case 'k': a->markers = 1; return 0;
    case 'K': a->markers = 0; return 0;
    case 'L': p->bare = 1; return 0;
    default: return CLI_NOT_MINE;
    }
}

int cmd_plot(int argc, char **argv) {
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'},    {"x", required_argument, 0, 'x'},      {"y", required_argument, 0, 'y'},
        {"logx", no_argument, 0, 'X'},         {"logy", no_argument, 0, 'Y'},         {"title", required_argument, 0, 't'},
        {"xlabel", required_argument, 0, 'a'}, {"ylabel", required_argument, 0, 'b'}, {"ymin", required_argument, 0, 'm'},
        {"ymax", required_argument, 0, 'M'},   {"size", required_argument, 0, 's'},   {"markers", no_argument, 0, 'k'},
        {"no-markers", no_argument, 0, 'K'},   {"no-labels", no_argument, 0, 'L'},    {"help", no_argument, 0, 'h'},
        {"by", required_argument, 0, 'g'},     {0, 0, 0, 0}};
    Args a = {.p = draw_plot_defaults(), .markers = -1};
    int rest, rc = cli_parse("plot", argc, argv, ":o:h", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    const char *out = a.out, *xname = a.xname, *ynames = a.ynames, *byname = a.byname;
    DrawPlot p = a.p;
    int markers = a.markers;
    if (rest != argc - 1)
        return cli_usage_error("plot", rest >= argc ? "missing the CSV to plot" : "expected one CSV, got %d", argc - rest);
    if (p.logy && ((!isnan(p.ymin) && p.ymin <= 0) || (!isnan(p.ymax) && p.ymax <= 0)))
        return cli_usage_error("plot", "--logy needs a positive --ymin/--ymax");
    if (!isnan(p.ymin) && !isnan(p.ymax) && !(p.ymax > p.ymin)) return cli_usage_error("plot", "--ymax must be above --ymin");
    const char *csv = argv[rest];
    char defout[4096];
    if (!out) {
        const char *dot = strrchr(csv, '.'), *slash = strrchr(csv, '/');
        int len = dot && (!slash || dot > slash) ? (int)(dot - csv) : (int)strlen(csv);
        snprintf(defout, sizeof defout, "%.*s.png", len, csv);
        out = defout;
    }
    Csv t;
    if ((rc = csv_read(&t, csv))) return cli_fail(rc);
    char names[2048];
    int xi = xname ? col_index(&t, xname) : 0;
    if (xi < 0) {
        col_list(&t, names, sizeof names);
        csv_free(&t);
        return cli_usage_error("plot", "--x '%s': %s has no such column (it has: %s)", xname, csv, names);
    }
    int *ys = xmalloc(sizeof(int) * t.ncol), ny = 0, bi = -1;
    if (byname && (bi = col_index(&t, byname)) < 0) {
        col_list(&t, names, sizeof names);
        rc = cli_usage_error("plot", "--by '%s': %s has no such column (it has: %s)", byname, csv, names);
    }
    if (!rc && ynames) {
        char *copy = xstrdup(ynames);
        for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
            int j = col_index(&t, trim(tok));
            if (j < 0) {
                col_list(&t, names, sizeof names);
                rc = cli_usage_error("plot", "--y '%s': %s has no such column (it has: %s)", trim(tok), csv, names);
                break;
            }
            if (ny < t.ncol) ys[ny++] = j;
        }
        free(copy);
    } else if (!rc) { /* every column but x, --by and columns of text only */
        for (int j = 0; j < t.ncol; j++) {
            int num = 0, text = 0;
            for (int i = 0; i < t.nrow; i++) num += !isnan(t.v[(size_t)i * t.ncol + j]), text += t.txt[(size_t)i * t.ncol + j] != NULL;
            if (j != xi && j != bi && (num || !text)) ys[ny++] = j; /* a column of only text is a label column */
        }
    }
    if (!rc && ny == 0) rc = cli_usage_error("plot", "no series to draw: %s has no numeric column besides x", csv);
    if (!rc && bi >= 0 && ny != 1) rc = cli_usage_error("plot", "--by draws one column per group: give --y COLUMN");
    if (!rc && (rc = col_numeric(&t, xi, csv)) == DDPM_OK)
        for (int k = 0; k < ny && !rc; k++) rc = col_numeric(&t, ys[k], csv);
    if (rc) {
        free(ys);
        csv_free(&t);
        return rc == DDPM_EUSAGE ? rc : cli_fail(rc);
    }
    /* the series: each y column over all rows, or with --by the y column over each group's
     * rows (groups in order of first appearance, points sorted by x) */
    int *grp = xmalloc(sizeof(int) * t.nrow), ng = 0;
    char **keys = xcalloc(t.nrow + 1, sizeof(char *));
    for (int i = 0; i < t.nrow; i++) {
        grp[i] = 0;
        if (bi < 0) continue;
        char key[256];
        group_key(&t, i, bi, key, sizeof key);
        int g = 0;
        while (g < ng && strcmp(keys[g], key)) g++;
        if (g == ng) keys[ng++] = xstrdup(key);
        grp[i] = g;
    }
    int nser = bi >= 0 ? ng : ny;
    double *xy = xmalloc(sizeof(double) * 2 * (size_t)t.nrow * (nser ? nser : 1));
    DrawSeries *ds = xcalloc(nser ? nser : 1, sizeof(DrawSeries));
    for (int k = 0; k < nser; k++) {
        double *x = xy + (size_t)2 * k * t.nrow, *y = x + t.nrow;
        int yj = bi >= 0 ? ys[0] : ys[k], m = 0;
        for (int i = 0; i < t.nrow; i++) {
            if (bi >= 0 && grp[i] != k) continue;
            double xv = t.v[(size_t)i * t.ncol + xi], yv = t.v[(size_t)i * t.ncol + yj];
            if (isfinite(xv) && isfinite(yv)) x[m] = xv, y[m] = yv, m++; /* a series joins its own points */
        }
        for (int i = 1; bi >= 0 && i < m; i++) /* insertion sort by x, stable */
            for (int j = i; j > 0 && x[j - 1] > x[j]; j--) {
                double tx = x[j], ty = y[j];
                x[j] = x[j - 1], y[j] = y[j - 1], x[j - 1] = tx, y[j - 1] = ty;
            }
        ds[k] = (DrawSeries){.name = bi >= 0 ? keys[k] : t.name[yj], .x = x, .y = y, .n = m, .color = k, .width = 2,
                             .markers = markers >= 0 ? markers : m <= 50};
    }
    if (!p.ylabel && bi >= 0) p.ylabel = t.name[ys[0]];
    if (!p.xlabel) p.xlabel = t.name[xi];
    if (!p.ylabel && ny == 1) p.ylabel = t.name[ys[0]];
    if (bi < 0 && ny == 1 && p.ylabel && !strcmp(p.ylabel, t.name[ys[0]])) ds[0].name = NULL; /* the axis says it */
    rc = draw_plot_png(out, &p, ds, nser);
    if (!rc) printf("%s\n", out);
    for (int g = 0; g < ng; g++) free(keys[g]);
    free(keys);
    free(grp);
    free(ds);
    free(xy);
    free(ys);
    csv_free(&t);
    return cli_fail(rc);
}

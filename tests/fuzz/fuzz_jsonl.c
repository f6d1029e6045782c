/* libFuzzer: a captioned folder's metadata.jsonl. The bytes go through jsonl_parse, then are
 * written as the metadata.jsonl of a folder holding one 2x2 PNG, a.png, and loaded with
 * captions_load_folder. Either returns DDPM_OK with every entry complete (a plain relative
 * file_name, lines increasing, at least one caption that passes text_check_caption; the
 * folder: one image per line, captions in range) or an error with one line. */
#include <stb_image_write.h>

#include "ddpm/captions.h"
#include "ddpm/text.h"
#include "fuzz.h"

static void write_image(void) {
    static int done;
    if (done) return;
    fz_init();
    char p[256];
    snprintf(p, sizeof p, "%s/a.png", fz_dir);
    const uint8_t pix[2 * 2 * 3] = {0, 50, 100, 150, 200, 250, 1, 2, 3, 4, 5, 6};
    if (!stbi_write_png(p, 2, 2, 3, pix, 6)) abort();
    done = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    write_image();
    JsonlTable t;
    int rc = jsonl_parse(&t, (const char *)data, n, "metadata.jsonl", "text");
    if (rc) {
        fz_check_error(rc);
        if (rc != DDPM_EUSAGE || t.n || t.e) abort();
    } else {
        if (t.n < 1) abort();
        for (int i = 0; i < t.n; i++) {
            const JsonlEntry *e = &t.e[i];
            if (!e->file_name[0] || e->file_name[0] == '/' || strstr(e->file_name, "//") || e->n_caps < 1) abort();
            if (i && e->line <= t.e[i - 1].line) abort();
            for (int j = 0; j < e->n_caps; j++)
                if (text_check_caption(e->caps[j], strlen(e->caps[j]), "x")) abort();
        }
        jsonl_free(&t);
    }
    fz_file("metadata.jsonl", data, n);
    CapData d;
    rc = captions_load_folder(&d, fz_dir, "text", 1 + (int)(n % 3), n % 2 ? 3 : 1, (int)(n % 3));
    if (rc) {
        fz_check_error(rc);
        if (d.img.n || d.text) abort();
        return 0;
    }
    if (d.img.n != 1 || d.cap_start[0] != 0 || d.cap_start[1] < 1 || d.cap_start[1] != d.n_text) abort();
    for (int j = 0; j < capdata_n_captions(&d, 0); j++)
        if (d.cap[j] < 0 || d.cap[j] >= d.n_text || !capdata_caption(&d, 0, j)[0]) abort();
    if (!capdata_pick(&d, 0, n, n)) abort();
    capdata_free(&d);
    return 0;
}

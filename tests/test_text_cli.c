/* Text-to-image as a user runs it: a tiny text-conditioned model trained a few steps on a
 * captioned folder (metadata.jsonl) and on "scenes"; `ddpm sample --prompt` (two prompts:
 * one grid row each), --prompts FILE, --negative-prompt, inpaint with a prompt; the
 * vocabulary read back from the checkpoint; and the one-line errors (exit 2): an unknown
 * word with its suggestion, --class on a text model, --prompt on a model without text, a
 * metadata.jsonl line without its image (file and line named), captions without model.text. */
#include <sys/stat.h>
#include <unistd.h>

#include "cli_util.h"
#include "ddpm/image.h"
#include "ddpm/checkpoint.h"

static const char *MODEL =
    " \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [%d], \"dropout\": 0, \"groups\": 4,"
    "            \"heads\": 2, \"text\": {\"max_len\": 10, \"d\": 16, \"layers\": 1, \"heads\": 2}},"
    " \"diffusion\": {\"T\": 100},"
    " \"train\": {\"batch_size\": 4, \"steps\": 3, \"log_every\": 1, \"sample_every\": 0, \"ckpt_every\": 3, \"keep\": 0,"
    "           \"seed\": 5, \"cond_drop\": 0.2, \"out_dir\": \"%s\"}";

static void expect_err(int rc, const char *needle, const char *what) {
    T_OK(rc == 2 && strstr(g_err, needle) && n_lines(g_err) == 1, "%s: exit %d, one line: %s", what, rc, g_err[0] ? g_err : "(no stderr)\n");
}

int main(void) {
    const char *d = t_tmpdir();
    char dir[600], p[800], cfg[700], js[8192], run_dir[700], model[2048];
    /* a captioned folder: 6 images, one caption a string, one a list */
    snprintf(dir, sizeof dir, "%s/folder", d);
    mkdir(dir, 0755);
    uint8_t px[16 * 16];
    for (int i = 0; i < 6; i++) {
        for (int j = 0; j < 256; j++) px[j] = (uint8_t)(i < 3 ? (j % 16 < 8) * 255 : (j / 16 < 8) * 200);
        snprintf(p, sizeof p, "%s/%d.png", dir, i);
        image_write_png(p, px, 16, 16, 1);
    }
    snprintf(p, sizeof p, "%s/metadata.jsonl", dir);
    write_text(p, "{\"file_name\": \"0.png\", \"text\": \"a red bag\"}\n"
                  "{\"file_name\": \"1.png\", \"text\": [\"a red bag\", \"the red handbag\"]}\n"
                  "{\"file_name\": \"2.png\", \"text\": \"a red bag, left\"}\n"
                  "{\"file_name\": \"3.png\", \"text\": \"a blue sneaker\"}\n"
                  "{\"file_name\": \"4.png\", \"text\": \"a blue sneaker on top\"}\n"
                  "{\"file_name\": \"5.png\", \"text\": \"A Blue Sneaker\"}\n");
    snprintf(run_dir, sizeof run_dir, "%s/run_folder", d);
    snprintf(model, sizeof model, MODEL, 8, run_dir);
    snprintf(js, sizeof js, "{\"data\": {\"format\": \"captions\", \"path\": \"%s\", \"image_size\": 16, \"channels\": 1}, %s}", dir, model);
    snprintf(cfg, sizeof cfg, "%s/folder.json", d);
    write_text(cfg, js);
    int rc = run("train -c %s -q", cfg);
    T_OK(rc == 0, "train a text model 3 steps on a captioned folder: exit %d %s", rc, g_err);
    snprintf(p, sizeof p, "%s/latest.safetensors", run_dir);
    {
        StFile f;
        Config c;
        int ok = ckpt_open(&f, p, &c) == 0;
        UNet u;
        ok = ok && unet_plan(&u, &c, 1, 0) == 0;
        ok = ok && ckpt_load_vocab(&f, &u) == 0;
        T_OK(ok && u.vocab.n == c.model.text.vocab && text_vocab_find(&u.vocab, "handbag") > 0 && text_vocab_find(&u.vocab, ",") > 0,
             "the checkpoint's vocabulary reads back: %d words, model.text.vocab %d, holds \"handbag\" and \",\"", u.vocab.n,
             c.model.text.vocab);
        if (ok) unet_free(&u), st_free(&f);
    }
    {   /* captions (a list: one picked per step) and cond_drop across a resume: bitwise */
        char straight[800];
        snprintf(straight, sizeof straight, "%s/straight", d);
        int r1 = run("train -c %s -q --set train.steps=6 --set train.out_dir=%s", cfg, straight);
        int r2 = run("train --resume %s -q --set train.steps=6", run_dir);
        char pa[900], pb[900];
        snprintf(pa, sizeof pa, "%s/latest.safetensors", straight);
        snprintf(pb, sizeof pb, "%s/latest.safetensors", run_dir);
        double mr = 1;
        int same = r1 == 0 && r2 == 0 && same_tensors(pa, pb, &mr) && mr == 0;
        T_OK(same, "text model: 6 steps straight = 3 + --resume to 6: weights, EMA, Adam bitwise (exits %d %d, max rel diff %.3g) %s",
             r1, r2, mr, g_err);
    }
    char out[700];
    snprintf(out, sizeof out, "%s/out", d);
    rc = run("sample --run %s -n 2 --sampler ddim --steps 3 --prompt \"a red bag\" --prompt \"a blue sneaker\" -o %s -q --guidance 3", run_dir, out);
    snprintf(p, sizeof p, "%s/000003.png", out);
    T_OK(rc == 0 && access(p, F_OK) == 0 && strstr(g_out, "prompts: \"a red bag\", \"a blue sneaker\""),
         "sample --prompt x2 -n 2: 4 images, rows named by the prompts (exit %d) %s", rc, g_err);
    snprintf(p, sizeof p, "%s/prompts.txt", d);
    write_text(p, "a red bag\n\nthe blue sneaker\n");
    rc = run("sample --run %s -n 1 --sampler ddim --steps 2 --prompts %s --negative-prompt \"a blue bag\" -o %s -q", run_dir, p, out);
    T_OK(rc == 0 && strstr(g_out, "\"the blue sneaker\""), "sample --prompts FILE --negative-prompt (exit %d) %s", rc, g_err);
    rc = run("sample --run %s -n 1 --steps 2 --prompt \"a red snekaer\" -o %s -q", run_dir, out);
    expect_err(rc, "unknown word \"snekaer\" (did you mean \"sneaker\"?)", "unknown word");
    rc = run("sample --run %s -n 1 --steps 2 --class 1 -o %s -q", run_dir, out);
    expect_err(rc, "text-conditioned model", "--class on a text model");
    snprintf(p, sizeof p, "%s/0.png", dir);
    rc = run("inpaint %s --run %s --mask top --steps 2 --prompt \"a blue sneaker\" -o %s -q", p, run_dir, out);
    T_OK(rc == 0, "inpaint the top half --prompt \"a blue sneaker\" (exit %d) %s", rc, g_err);

    /* scenes */
    snprintf(run_dir, sizeof run_dir, "%s/run_scenes", d);
    snprintf(model, sizeof model, MODEL, 14, run_dir);
    snprintf(js, sizeof js, "{\"data\": {\"format\": \"scenes\", \"limit\": 64, \"image_size\": 28, \"channels\": 1}, %s}", model);
    snprintf(cfg, sizeof cfg, "%s/scenes.json", d);
    write_text(cfg, js);
    if (access("/usr/share/datasets/fashion-mnist", F_OK) != 0) {
        T_SKIP("no Fashion-MNIST at /usr/share/datasets/fashion-mnist: scenes not trained");
    } else {
        rc = run("train -c %s -q", cfg);
        T_OK(rc == 0, "train a text model 3 steps on scenes: exit %d %s", rc, g_err);
        rc = run("sample --run %s -n 2 --sampler ddim --steps 2 --prompt \"a small bright bag in the top right\" --prompt \"a large faint bag\" "
                 "-o %s -q", run_dir, out);
        T_OK(rc == 0, "sample scenes with a canonical and a held-out prompt (exit %d) %s", rc, g_err);
    }

    /* errors */
    snprintf(p, sizeof p, "%s/metadata.jsonl", dir);
    write_text(p, "{\"file_name\": \"0.png\", \"text\": \"a red bag\"}\n{\"file_name\": \"9.png\", \"text\": \"gone\"}\n");
    snprintf(run_dir, sizeof run_dir, "%s/run_bad", d);
    snprintf(model, sizeof model, MODEL, 8, run_dir);
    snprintf(js, sizeof js, "{\"data\": {\"format\": \"captions\", \"path\": \"%s\", \"image_size\": 16, \"channels\": 1}, %s}", dir, model);
    write_text(cfg, js);
    rc = run("train -c %s -q", cfg);
    expect_err(rc, "metadata.jsonl:2", "a metadata.jsonl line whose image is missing");
    T_OK(access(run_dir, F_OK) != 0, "nothing written for the bad folder");
    rc = run("train -c %s -q --set model.text.max_len=0", cfg);
    expect_err(rc, "model.text.max_len", "captions without model.text");
    /* an unconditional checkpoint: --prompt is refused */
    rc = run("sample --ckpt tests/fixtures/tiny_model.safetensors -n 1 --steps 2 --prompt \"a bag\" -o %s -q", out);
    expect_err(rc, "no text encoder", "--prompt on a model without text");
    return t_done();
}

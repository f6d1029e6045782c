/* text + captions: the word tokenizer, vocabulary build / serialise / validated read,
 * encoding with padding, truncation and unknown-word suggestions; the metadata.jsonl
 * reader (every bad case names file and line) and captioned folders on small generated
 * images; the per-step caption choice; the "scenes" dataset (determinism, caption grammar,
 * pixels against an independent rendering, held-out captions never drawn). The real
 * Fashion-MNIST scenes are checked when the Debian package is installed. */
#define _GNU_SOURCE
#include "ddpm/text.h"

#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stb_image_write.h>

#include "ddpm/captions.h"
#include "ddpm/data.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "test.h"


static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(s, 1, strlen(s), f) != strlen(s)) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

/* tokens of s joined by '|' (static buffer) */
static const char *toks(const char *s) {
    static char out[512];
    TextTokens t = {0};
    text_tokenize(&t, s, strlen(s));
    out[0] = 0;
    for (int i = 0; i < t.n; i++) {
        if (i) strcat(out, "|");
        strncat(out, t.tok[i], sizeof out - strlen(out) - 2);
    }
    text_tokens_free(&t);
    return out;
}

/* ---------------------------------------------------------------------------------------- */

static void test_tokenizer(void) {
    printf("tokenizer\n");
    struct { const char *in, *want; } cases[] = {
        {"A Red Bag, faint.", "a|red|bag|,|faint|."},
        {"T-shirt", "t-shirt"},
        {"an Ankle-Boot's strap", "an|ankle-boot's|strap"},
        {"x-ray-proof", "x-ray-proof"},
        {"-x x- a--b", "-|x|x|-|a|-|-|b"},
        {"  tabs\tand\vnewlines\x01 ", "tabs|and|newlines"},
        {"(top left)!", "(|top|left|)|!"},
        {"Café ÉTÉ don’t", "café|ÉtÉ|don’t"}, /* only ASCII is case-folded */
        {"3 bags", "3|bags"},
        {"", ""},
        {" \t ", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = toks(cases[i].in);
        T_OK(!strcmp(got, cases[i].want), "tokens of \"%s\": %s (want %s)", cases[i].in, got, cases[i].want);
    }
    char *nrm = text_normalize("  A small,  FAINT sneaker ");
    T_OK(!strcmp(nrm, "a small , faint sneaker"), "normalize: \"%s\"", nrm);
    free(nrm);

    T_OK(utf8_valid("abc", 3) && utf8_valid("\xc3\xa9", 2), "utf8: valid text accepted");
    T_OK(!utf8_valid("\xc3", 1) && !utf8_valid("\xc0\xaf", 2) && !utf8_valid("\xed\xa0\x80", 3) &&
             !utf8_valid("\xf4\x90\x80\x80", 4) && !utf8_valid("\xff", 1),
         "utf8: truncated, overlong, surrogate, > U+10FFFF, 0xff refused");

    int rc = text_check_caption("a red bag", 9, "f:1");
    T_OK(rc == DDPM_OK, "check_caption: good caption ok (%d)", rc);
    rc = text_check_caption(" \t", 2, "f:2");
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "f:2: caption is empty"), "check_caption: blank -> %s", err_msg());
    rc = text_check_caption("a \xff bag", 7, "f:3");
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "f:3: caption is not valid UTF-8"), "check_caption: bad UTF-8 -> %s",
         err_msg());
    char lng[200];
    memset(lng, 'w', TEXT_MAX_WORD + 1);
    lng[TEXT_MAX_WORD + 1] = 0;
    rc = text_check_caption(lng, strlen(lng), "f:4");
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "f:4: caption word") && strstr(err_msg(), "65 bytes"),
         "check_caption: 65-byte word -> %s", err_msg());
    lng[TEXT_MAX_WORD] = 0;
    T_OK(text_check_caption(lng, strlen(lng), "f:5") == DDPM_OK, "check_caption: 64-byte word ok");
}

static void test_vocab(void) {
    printf("vocabulary\n");
    const char *caps[] = {"a small faint sneaker in the top left", "A large bright coat.", "a bag, faint", "sneaker"};
    const char *perm[] = {"sneaker", "a bag, faint", "A large bright coat.", "a small faint sneaker in the top left"};
    Vocab v, w;
    int rc = text_vocab_build(&v, caps, 4);
    T_OK(rc == DDPM_OK, "build from 4 captions (%d)", rc);
    const char *want[] = {"<pad>", "<unk>", "<bos>", ",", ".", "a", "bag", "bright", "coat", "faint", "in", "large", "left",
                          "small", "sneaker", "the", "top"};
    int nw = (int)(sizeof want / sizeof want[0]), same = v.n == nw;
    for (int i = 0; same && i < nw; i++) same = !strcmp(v.words[i], want[i]);
    T_OK(same, "words sorted after <pad> <unk> <bos>, no duplicates (%d ids)", v.n);
    T_OK(text_vocab_find(&v, "sneaker") == 14 && text_vocab_find(&v, ",") == 3 && text_vocab_find(&v, "shoe") == -1 &&
             text_vocab_find(&v, "<pad>") == -1,
         "find: sneaker %d, \",\" %d, shoe %d, <pad> %d (specials are not words)", text_vocab_find(&v, "sneaker"),
         text_vocab_find(&v, ","), text_vocab_find(&v, "shoe"), text_vocab_find(&v, "<pad>"));
    rc = text_vocab_build(&w, perm, 4);
    same = rc == DDPM_OK && w.n == v.n;
    for (int i = 0; same && i < v.n; i++) same = !strcmp(v.words[i], w.words[i]);
    T_OK(same, "the same words in another caption order give the same vocabulary");
    text_vocab_free(&w);

    size_t len;
    char *s = text_vocab_write(&v, &len);
    T_OK(!strncmp(s, "<pad>\n<unk>\n<bos>\n,\n.\na\nbag\n", 27) && s[len - 1] == 'p' && strlen(s) == len,
         "serialised: one word a line, specials first, no trailing newline (%zu bytes)", len);
    rc = text_vocab_read(&w, s, len, "ck");
    same = rc == DDPM_OK && w.n == v.n;
    for (int i = 0; same && i < v.n; i++) same = !strcmp(v.words[i], w.words[i]);
    char *s2 = same ? text_vocab_write(&w, NULL) : NULL;
    T_OK(same && s2 && !strcmp(s, s2), "read(write(v)) == v and writes the same bytes");
    free(s2);
    text_vocab_free(&w);
    free(s);

    /* every way a stored vocabulary can be wrong */
    struct { const char *name; const char *buf; size_t n; const char *msg; } bad[] = {
        {"empty", "", 0, "line 1: empty word"},
        {"specials only two", "<pad>\n<unk>", 0, "fewer than the 3 special"},
        {"specials out of order", "<unk>\n<pad>\n<bos>", 0, "line 1: expected \"<pad>\""},
        {"trailing newline", "<pad>\n<unk>\n<bos>\na\n", 0, "line 5: empty word"},
        {"empty line", "<pad>\n<unk>\n<bos>\n\na", 0, "line 4: empty word"},
        {"unsorted", "<pad>\n<unk>\n<bos>\nb\na", 0, "line 5: \"a\" is out of sorted order"},
        {"prefix after longer", "<pad>\n<unk>\n<bos>\nab\na", 0, "line 5: \"a\" is out of sorted order"},
        {"duplicate", "<pad>\n<unk>\n<bos>\na\na", 0, "line 5: \"a\" appears twice"},
        {"upper case", "<pad>\n<unk>\n<bos>\nBag", 0, "line 4: \"Bag\" is not a single lower-case token"},
        {"two tokens", "<pad>\n<unk>\n<bos>\nred bag", 0, "line 4: \"red bag\" is not a single"},
        {"punctuation glued", "<pad>\n<unk>\n<bos>\nbag,", 0, "is not a single"},
        {"special as word", "<pad>\n<unk>\n<bos>\n<pad>", 0, "is not a single"},
        {"bad UTF-8", "<pad>\n<unk>\n<bos>\n\xc3(", 0, "line 4: not valid UTF-8"},
        {"NUL", "<pad>\n<unk>\n<bos>\na\0b", 21, "line 4: not valid UTF-8"},
        {"CR", "<pad>\r\n<unk>\n<bos>", 0, "line 1: expected"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = text_vocab_read(&w, bad[i].buf, bad[i].n ? bad[i].n : strlen(bad[i].buf), "ck.safetensors");
        T_OK(rc == DDPM_ERUNTIME && !strncmp(err_msg(), "ck.safetensors: vocabulary ", 27) && strstr(err_msg(), bad[i].msg) &&
                 w.n == 0 && w.words == NULL,
             "read %s: %s", bad[i].name, err_msg());
    }
    /* a word of TEXT_MAX_WORD + 1 bytes, and one id too many */
    char *big = xmalloc((size_t)TEXT_MAX_VOCAB * 8 + 64);
    int k = sprintf(big, "<pad>\n<unk>\n<bos>\n");
    memset(big + k, 'w', TEXT_MAX_WORD + 1);
    rc = text_vocab_read(&w, big, (size_t)k + TEXT_MAX_WORD + 1, "ck");
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "line 4: word of 65 bytes"), "read 65-byte word: %s", err_msg());
    for (int i = 0; i < TEXT_MAX_VOCAB - TEXT_N_SPECIAL + 1; i++) k += sprintf(big + k, "w%06d\n", i);
    k--; /* no trailing newline */
    rc = text_vocab_read(&w, big, (size_t)k, "ck");
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "line 65537: more than 65536 words"), "read 65537 ids: %s", err_msg());
    rc = text_vocab_read(&w, big, (size_t)k - 8, "ck");
    T_OK(rc == DDPM_OK && w.n == TEXT_MAX_VOCAB, "read exactly 65536 ids: %d (%d)", w.n, rc);
    text_vocab_free(&w);
    /* building: the same limit, as a usage error */
    for (int i = 0; i < k; i++)
        if (big[i] == '\n') big[i] = ' ';
    const char *one[] = {big + 18};
    rc = text_vocab_build(&w, one, 1);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "65534 distinct words, more than the 65533"), "build 65534 words: %s",
         err_msg());
    const char *badcap[] = {"fine", "   "};
    rc = text_vocab_build(&w, badcap, 2);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "caption 1: caption is empty"), "build with an empty caption: %s", err_msg());
    free(big);
    text_vocab_free(&v);
}

static void test_encode(void) {
    printf("encoding\n");
    const char *caps[] = {"a small faint sneaker in the top left", "a large bright coat", "a sandal, a shirt"};
    Vocab v;
    text_vocab_build(&v, caps, 3);
    int32_t ids[16];
    float mask[16];
    int n = -1;
    char *dropped = (char *)1;
    int rc = text_encode(&v, "A small  sneaker", 6, ids, mask, &n, &dropped, 1);
    int a = text_vocab_find(&v, "a"), sm = text_vocab_find(&v, "small"), sn = text_vocab_find(&v, "sneaker");
    T_OK(rc == DDPM_OK && n == 4 && ids[0] == TEXT_BOS && ids[1] == a && ids[2] == sm && ids[3] == sn && ids[4] == TEXT_PAD &&
             ids[5] == TEXT_PAD && mask[3] == 1.0f && mask[4] == 0.0f && mask[0] == 1.0f && dropped == NULL,
         "\"A small  sneaker\" -> [%d %d %d %d %d %d], %d tokens", ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], n);
    rc = text_encode(&v, "", 4, ids, mask, &n, &dropped, 1);
    T_OK(rc == DDPM_OK && n == 1 && ids[0] == TEXT_BOS && ids[1] == 0 && ids[3] == 0 && mask[0] == 1 && mask[1] == 0 &&
             !dropped,
         "empty caption -> [<bos>, <pad>...], 1 token");
    rc = text_encode(&v, "a small faint sneaker in the top left", 5, ids, NULL, &n, &dropped, 1);
    T_OK(rc == DDPM_OK && n == 5 && ids[4] == sn && dropped && !strcmp(dropped, "in the top left"),
         "truncated to 5: keeps <bos> + 4 words, dropped \"%s\"", dropped ? dropped : "(none)");
    free(dropped);
    rc = text_encode(&v, "a sandal, a shirt", 1, ids, NULL, &n, &dropped, 1);
    T_OK(rc == DDPM_OK && n == 1 && ids[0] == TEXT_BOS && dropped && !strcmp(dropped, "a sandal , a shirt"),
         "max_len 1: only <bos>, everything dropped (\"%s\")", dropped ? dropped : "");
    free(dropped);
    rc = text_encode(&v, "a small faint sneaker in the top left", 9, ids, NULL, &n, &dropped, 1);
    T_OK(rc == DDPM_OK && n == 9 && !dropped, "exactly max_len - 1 words: nothing dropped");

    rc = text_encode(&v, "a small snekaer", 8, ids, mask, &n, &dropped, 1);
    T_OK(rc == DDPM_EUSAGE && !strcmp(err_msg(), "unknown word \"snekaer\" (did you mean \"sneaker\"?)"), "strict: %s",
         err_msg());
    rc = text_encode(&v, "a Larg bright coat", 8, ids, mask, &n, &dropped, 1);
    T_OK(rc == DDPM_EUSAGE && !strcmp(err_msg(), "unknown word \"larg\" (did you mean \"large\"?)"), "strict: %s", err_msg());
    rc = text_encode(&v, "a small sneaker xylophone", 3, ids, mask, &n, &dropped, 1);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "unknown word \"xylophone\" (not one of the model's"),
         "strict: an unknown word past max_len is still an error: %s", err_msg());
    rc = text_encode(&v, "a \xff bag", 8, ids, mask, &n, &dropped, 1);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "not valid UTF-8"), "strict: bad UTF-8: %s", err_msg());
    rc = text_encode(&v, "a small snekaer", 8, ids, mask, &n, &dropped, 0);
    T_OK(rc == DDPM_OK && n == 4 && ids[3] == TEXT_UNK, "not strict: unknown word -> <unk> (%d)", ids[3]);
    rc = text_encode(&v, "a \xff", 8, ids, mask, &n, &dropped, 0);
    T_OK(rc == DDPM_OK && n == 3 && ids[2] == TEXT_UNK, "not strict: bad bytes -> <unk>");

    /* suggestions */
    const char *s1 = text_suggest(&v, "snekaer"), *s2 = text_suggest(&v, "shirts"), *s3 = text_suggest(&v, "xx"),
               *s4 = text_suggest(&v, "coats"), *s5 = text_suggest(&v, "sandle");
    T_OK(s1 && !strcmp(s1, "sneaker"), "suggest snekaer -> %s (a swap is one edit)", s1 ? s1 : "(none)");
    T_OK(s2 && !strcmp(s2, "shirt"), "suggest shirts -> %s", s2 ? s2 : "(none)");
    T_OK(s3 == NULL, "suggest xx -> nothing (2 letters: 1 edit allowed, nearest is 2 away)");
    T_OK(s4 && !strcmp(s4, "coat"), "suggest coats -> %s", s4 ? s4 : "(none)");
    T_OK(s5 && !strcmp(s5, "sandal"), "suggest sandle -> %s", s5 ? s5 : "(none)");
    const char *tie_caps[] = {"bat cat"};
    Vocab t;
    text_vocab_build(&t, tie_caps, 1);
    const char *s6 = text_suggest(&t, "hat");
    T_OK(s6 && !strcmp(s6, "bat"), "tie at distance 1 goes to the lower id: %s", s6 ? s6 : "(none)");
    const char *u_caps[] = {"café crème"};
    Vocab u;
    text_vocab_build(&u, u_caps, 1);
    const char *s7 = text_suggest(&u, "crme");
    T_OK(s7 && !strcmp(s7, "crème"), "distance over code points (2 bytes, 1 edit): crme -> %s", s7 ? s7 : "(none)");
    text_vocab_free(&u);
    text_vocab_free(&t);
    text_vocab_free(&v);
}

/* ---------------------------------------------------------------------------------------- */

static void test_pick(void) {
    printf("caption choice\n");
    int cnt[3] = {0}, same = 1, in_range = 1, varies = 0;
    for (int s = 0; s < 3000; s++) {
        int j = captions_pick(7, (uint64_t)s, 5, 3);
        in_range &= j >= 0 && j < 3;
        if (j >= 0 && j < 3) cnt[j]++;
        same &= j == captions_pick(7, (uint64_t)s, 5, 3);
        varies |= j != captions_pick(7, (uint64_t)s, 6, 3) || j != captions_pick(8, (uint64_t)s, 5, 3);
    }
    T_OK(in_range && same, "pick in 0..2 and a pure function of (seed, step, index)");
    T_OK(varies, "other index or seed gives other picks");
    /* binomial(3000, 1/3): sd 25.8; 6 sd */
    T_OK(abs(cnt[0] - 1000) < 155 && abs(cnt[1] - 1000) < 155 && abs(cnt[2] - 1000) < 155,
         "3000 picks of 3: %d %d %d (each 1000 +- 155)", cnt[0], cnt[1], cnt[2]);
    T_OK(captions_pick(1, 2, 3, 1) == 0 && captions_pick(1, 2, 3, 0) == 0, "k = 1: always 0");

    /* the batch index helper against labels that carry the index */
    Dataset ds = {0};
    ds.n = 10, ds.size = 1, ds.c = 1;
    ds.pix = calloc(10, 1);
    ds.labels = malloc(10 * sizeof(int));
    for (int i = 0; i < 10; i++) ds.labels[i] = i;
    Batcher b;
    batcher_init(&b, 10, 3, false);
    float img[4];
    int lab[4], ok = 1;
    for (int step = 0; step < 7; step++) {
        batcher_next(&b, &ds, img, lab, 4, 0, 4);
        for (int k = 0; k < 4; k++) ok &= captions_batch_index(&b, 4, k) == lab[k];
    }
    T_OK(ok, "captions_batch_index matches the batcher's order over 7 batches (3 epochs)");
    batcher_free(&b);
    free(ds.pix);
    free(ds.labels);
}

/* ---------------------------------------------------------------------------------------- */
/* metadata.jsonl */

static void jsonl_bad(const char *name, const char *text, const char *msg) {
    JsonlTable t;
    int rc = jsonl_parse(&t, text, strlen(text), "d/metadata.jsonl", "text");
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), msg) && t.n == 0 && !strchr(err_msg(), '\n'), "%s: %s", name, err_msg());
    jsonl_free(&t);
}

static void test_jsonl(void) {
    printf("metadata.jsonl parser\n");
    const char *good = "\xEF\xBB\xBF{\"file_name\": \"0001.png\", \"text\": \"a red bag\"}\r\n"
                       "\n   \n"
                       "{\"text\": [\"a big coat\", \"a large coat\"], \"file_name\": \"img/0002.png\", \"extra\": 3}\n"
                       "{\"file_name\": \"caf\\u00e9.png\", \"text\": \"\\u00e9t\\u00e9 dress\", \"text_2\": null}";
    JsonlTable t;
    int rc = jsonl_parse(&t, good, strlen(good), "m.jsonl", "text");
    T_OK(rc == DDPM_OK && t.n == 3, "good file: %d entries (%s)", t.n, rc ? err_msg() : "ok");
    if (rc == DDPM_OK && t.n == 3) {
        T_OK(!strcmp(t.e[0].file_name, "0001.png") && t.e[0].line == 1 && t.e[0].n_caps == 1 &&
                 !strcmp(t.e[0].caps[0], "a red bag"),
             "line 1 (BOM, CRLF): 0001.png \"a red bag\"");
        T_OK(!strcmp(t.e[1].file_name, "img/0002.png") && t.e[1].line == 4 && t.e[1].n_caps == 2 &&
                 !strcmp(t.e[1].caps[1], "a large coat"),
             "line 4 (after blank lines): a list of 2 captions, extra keys ignored");
        T_OK(!strcmp(t.e[2].file_name, "café.png") && !strcmp(t.e[2].caps[0], "été dress"), "line 5: \\u escapes decoded");
    }
    jsonl_free(&t);
    rc = jsonl_parse(&t, good, strlen(good), "m.jsonl", "text_2");
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "m.jsonl:1: image \"0001.png\" has no caption: no \"text_2\" key"),
         "another caption column: %s", err_msg());
    const char *other = "{\"file_name\": \"a.png\", \"caption\": \"a bag\"}";
    rc = jsonl_parse(&t, other, strlen(other), "m.jsonl", "caption");
    T_OK(rc == DDPM_OK && t.n == 1 && !strcmp(t.e[0].caps[0], "a bag"), "column \"caption\" read");
    jsonl_free(&t);

    jsonl_bad("not JSON", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n{file_name: b.png}\n", "d/metadata.jsonl:2: not JSON");
    jsonl_bad("truncated", "{\"file_name\": \"a.png\", \"text\": \"x\"", "d/metadata.jsonl:1: not JSON");
    jsonl_bad("two objects a line", "{\"file_name\": \"a.png\", \"text\": \"x\"} {}", "metadata.jsonl:1: text after the JSON");
    jsonl_bad("array", "\n[\"a.png\", \"x\"]", "metadata.jsonl:2: not a JSON object");
    jsonl_bad("number", "42", "metadata.jsonl:1: not a JSON object");
    jsonl_bad("no file_name", "{\"text\": \"a bag\"}", "metadata.jsonl:1: no \"file_name\"");
    jsonl_bad("file_name a number", "{\"file_name\": 7, \"text\": \"a bag\"}", ":1: \"file_name\" must be a string");
    jsonl_bad("file_name ..", "{\"file_name\": \"../x.png\", \"text\": \"a bag\"}", ":1: file_name \"../x.png\" must be a path inside");
    jsonl_bad("file_name absolute", "{\"file_name\": \"/etc/x.png\", \"text\": \"a\"}", ":1: file_name \"/etc/x.png\" must be");
    jsonl_bad("file_name a//b", "{\"file_name\": \"a//b.png\", \"text\": \"a\"}", "must be a path inside");
    jsonl_bad("file_name ./a", "{\"file_name\": \"./a.png\", \"text\": \"a\"}", "must be a path inside");
    jsonl_bad("file_name empty", "{\"file_name\": \"\", \"text\": \"a\"}", "must be a path inside");
    jsonl_bad("file_name dir/", "{\"file_name\": \"img/\", \"text\": \"a\"}", "must be a path inside");
    jsonl_bad("no caption", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n{\"file_name\": \"b.png\"}",
              "metadata.jsonl:2: image \"b.png\" has no caption: no \"text\" key");
    jsonl_bad("null caption", "{\"file_name\": \"b.png\", \"text\": null}", ":1: image \"b.png\" has no caption");
    jsonl_bad("empty list", "{\"file_name\": \"b.png\", \"text\": []}", ":1: image \"b.png\" has no caption: \"text\" is an empty list");
    jsonl_bad("empty caption", "{\"file_name\": \"b.png\", \"text\": \"\"}", "metadata.jsonl:1: caption is empty");
    jsonl_bad("blank caption", "{\"file_name\": \"b.png\", \"text\": \" \\t \"}", ":1: caption is empty");
    jsonl_bad("empty caption in a list", "{\"file_name\": \"b.png\", \"text\": [\"a bag\", \"\"]}", ":1: caption is empty");
    jsonl_bad("caption a number", "{\"file_name\": \"b.png\", \"text\": 3}", ":1: \"text\" must be a caption string");
    jsonl_bad("caption list of numbers", "{\"file_name\": \"b.png\", \"text\": [\"a\", 3]}", ":1: \"text\" must be a caption string");
    jsonl_bad("caption \\u0000", "{\"file_name\": \"b.png\", \"text\": \"\\u0000x\"}", ":1: caption is empty");
    jsonl_bad("non-UTF-8 line", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n\n{\"file_name\": \"b.png\", \"text\": \"caf\xe9\"}",
              "metadata.jsonl:3: line is not valid UTF-8");
    jsonl_bad("lone surrogate escape", "{\"file_name\": \"b.png\", \"text\": \"\\ud800 x\"}", ":1: not JSON");
    jsonl_bad("duplicate", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n{\"file_name\": \"b.png\", \"text\": \"y\"}\n"
                           "{\"file_name\": \"a.png\", \"text\": \"z\"}\n{\"file_name\": \"b.png\", \"text\": \"w\"}",
              "metadata.jsonl:3: file_name \"a.png\" already appears on line 1");
    jsonl_bad("no lines", "\n  \n", "d/metadata.jsonl: no captions");
    jsonl_bad("empty file", "", "d/metadata.jsonl: no captions");
    char nul[] = "{\"file_name\": \"a.png\", \"text\": \"x\"}\n{\"file_name\"\0: 1}";
    rc = jsonl_parse(&t, nul, sizeof nul - 1, "m", "text");
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "m:2: line contains a NUL byte"), "NUL byte: %s", err_msg());
}

/* a w x h RGB PNG whose pixel (y, x) = (base + x, base + 2y, 200) */
static void write_png(const char *path, int w, int h, int base) {
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *q = p + 3 * (y * w + x);
            q[0] = (uint8_t)(base + x), q[1] = (uint8_t)(base + 2 * y), q[2] = 200;
        }
    if (!stbi_write_png(path, w, h, 3, p, w * 3)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    free(p);
}

static void folder_bad(const char *dir, const char *meta, int want_rc, const char *msg) {
    if (meta) write_text(t_path("%s/metadata.jsonl", dir), meta);
    CapData d;
    int rc = captions_load_folder(&d, t_path("%s", dir), "text", 4, 3, 0);
    T_OK(rc == want_rc && strstr(err_msg(), msg) && d.img.n == 0 && d.text == NULL, "%s: %s", dir, err_msg());
    capdata_free(&d);
}

static void test_folder(void) {
    printf("captioned folders\n");
    mkdir(t_path("cap"), 0777);
    mkdir(t_path("cap/img"), 0777);
    write_png(t_path("cap/b.png"), 4, 4, 10);
    write_png(t_path("cap/img/a.png"), 4, 4, 50);
    write_png(t_path("cap/c.png"), 8, 8, 90);
    write_text(t_path("cap/notes.txt"), "not an image, not listed: fine");
    write_text(t_path("cap/metadata.jsonl"),
               "{\"file_name\": \"b.png\", \"text\": \"a blue box\"}\n"
               "{\"file_name\": \"img/a.png\", \"text\": [\"one\", \"two words\", \"three\"]}\n"
               "{\"file_name\": \"c.png\", \"text\": \"a big one\"}\n");
    CapData d;
    int rc = captions_load_folder(&d, t_path("cap"), "text", 4, 3, 0);
    T_OK(rc == DDPM_OK && d.img.n == 3 && d.img.size == 4 && d.img.c == 3 && d.attr == NULL, "loaded 3 examples (%s)",
         rc ? err_msg() : "ok");
    if (rc == DDPM_OK) {
        T_OK(capdata_n_captions(&d, 0) == 1 && capdata_n_captions(&d, 1) == 3 && capdata_n_captions(&d, 2) == 1 &&
                 !strcmp(capdata_caption(&d, 1, 1), "two words") && !strcmp(capdata_caption(&d, 2, 0), "a big one") &&
                 d.n_text == 5,
             "captions in line order: 1, 3, 1 (%d texts)", d.n_text);
        const uint8_t *p0 = d.img.pix, *p1 = d.img.pix + 48;
        T_OK(p0[0] == 10 && p0[1] == 10 && p0[2] == 200 && p0[3 * 5] == 11 && p0[3 * 5 + 1] == 12 && p1[0] == 50,
             "pixels in line order: b.png (10,10,200) then img/a.png (%d)", p1[0]);
        int seen[3] = {0};
        for (int s = 0; s < 300; s++) {
            const char *c = capdata_pick(&d, 1, 42, (uint64_t)s);
            for (int j = 0; j < 3; j++) seen[j] += c == capdata_caption(&d, 1, j);
        }
        T_OK(seen[0] + seen[1] + seen[2] == 300 && seen[0] > 60 && seen[1] > 60 && seen[2] > 60,
             "capdata_pick draws every caption of a list: %d %d %d of 300", seen[0], seen[1], seen[2]);
        T_OK(capdata_pick(&d, 0, 42, 5) == capdata_caption(&d, 0, 0), "one caption: always it");
        Vocab v;
        rc = text_vocab_build(&v, (const char *const *)d.text, d.n_text);
        T_OK(rc == DDPM_OK && v.n == TEXT_N_SPECIAL + 8, "vocabulary of the folder: %d words", v.n - TEXT_N_SPECIAL);
        text_vocab_free(&v);
    }
    capdata_free(&d);
    rc = captions_load_folder(&d, t_path("cap"), "text", 2, 1, 2);
    T_OK(rc == DDPM_OK && d.img.n == 2 && d.img.c == 1 && d.cap_start[2] == 4 && d.n_text == 4,
         "limit 2, grey, 2x2: first two lines (%d images)", d.img.n);
    capdata_free(&d);

    /* bad folders, each one line naming file (and line) */
    mkdir(t_path("miss"), 0777);
    write_png(t_path("miss/a.png"), 4, 4, 0);
    folder_bad("miss", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n{\"file_name\": \"b.png\", \"text\": \"y\"}\n", DDPM_EUSAGE,
               "miss/metadata.jsonl:2: image \"b.png\" not found in");
    mkdir(t_path("nocap"), 0777);
    mkdir(t_path("nocap/sub"), 0777);
    write_png(t_path("nocap/a.png"), 4, 4, 0);
    write_png(t_path("nocap/sub/z.jpg"), 4, 4, 0);
    folder_bad("nocap", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n", DDPM_EUSAGE,
               "nocap/sub/z.jpg: image without a caption: no line in metadata.jsonl");
    write_text(t_path("nocap/notes.txt"), "x");
    folder_bad("nocap", "{\"file_name\": \"notes.txt\", \"text\": \"x\"}\n", DDPM_EUSAGE,
               "nocap/metadata.jsonl:1: \"notes.txt\" is not a .png, .jpg or .jpeg image file");
    folder_bad("nocap", "{\"file_name\": \"sub\", \"text\": \"x\"}\n", DDPM_EUSAGE, ":1: \"sub\" is not a .png");
    folder_bad("nocap", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n{\"file_name\": \"sub/z.jpg\", \"text\": \"\"}\n",
               DDPM_EUSAGE, "nocap/metadata.jsonl:2: caption is empty");
    folder_bad("nocap", "{\"file_name\": \"a.png\", \"text\": \"x\"}\nnot json\n", DDPM_EUSAGE, "nocap/metadata.jsonl:2: not JSON");
    mkdir(t_path("nometa"), 0777);
    write_png(t_path("nometa/a.png"), 4, 4, 0);
    folder_bad("nometa", NULL, DDPM_EUSAGE, "nometa/metadata.jsonl: not found");
    folder_bad("does_not_exist", NULL, DDPM_EUSAGE, "does_not_exist: captioned image folder not found");
    mkdir(t_path("corrupt"), 0777);
    write_text(t_path("corrupt/a.png"), "this is no PNG");
    folder_bad("corrupt", "{\"file_name\": \"a.png\", \"text\": \"x\"}\n", DDPM_ERUNTIME, "corrupt/a.png");
}

/* ---------------------------------------------------------------------------------------- */
/* scenes */

enum { NSRC = 30 };
static uint8_t src_img[NSRC * 28 * 28];
static int src_lab[NSRC];

static void make_sources(void) {
    uint32_t x = 12345;
    for (int i = 0; i < NSRC * 28 * 28; i++) {
        x = x * 1664525u + 1013904223u;
        src_img[i] = (uint8_t)(x >> 24);
    }
    for (int i = 0; i < NSRC; i++) src_lab[i] = (i * 7) % 10;
}

/* The scene as the issue defines it, written independently of scenes_render (in doubles). */
static void expect_scene(uint8_t *out, const uint8_t *s, const SceneAttr *a) {
    static const int rc[5][2] = {{0, 0}, {0, 14}, {14, 0}, {14, 14}, {7, 7}};
    double t = a->tone == SCENE_FAINT ? 0.4 : 1.0;
    memset(out, 0, 28 * 28);
    if (a->size == SCENE_LARGE) {
        for (int i = 0; i < 28 * 28; i++) out[i] = (uint8_t)floor(s[i] * t + 0.5);
        return;
    }
    for (int y = 0; y < 14; y++)
        for (int x = 0; x < 14; x++) {
            double m = (s[2 * y * 28 + 2 * x] + s[2 * y * 28 + 2 * x + 1] + s[(2 * y + 1) * 28 + 2 * x] +
                        s[(2 * y + 1) * 28 + 2 * x + 1]) / 4.0;
            double v = floor(m + 0.5);
            out[(rc[a->pos][0] + y) * 28 + rc[a->pos][1] + x] = (uint8_t)floor(v * t + 0.5);
        }
}

/* data.held_out's default list */
#define N_HELD_OUT 3
static const char *const HELD_OUT[N_HELD_OUT] = {"a small bright trouser in the bottom right", "a large faint bag",
                                                  "a small faint sneaker in the center"};

static int attr_eq(const SceneAttr *a, const SceneAttr *b) {
    return a->cls == b->cls && a->size == b->size && a->pos == b->pos && a->tone == b->tone;
}

static void test_scenes_synthetic(void) {
    printf("scenes (synthetic sources)\n");
    make_sources();
    ScenesOpts o = {.n = 6000, .seed = 11, .held_out = HELD_OUT, .n_held_out = N_HELD_OUT,
                    .paraphrase = 1, .size = 28, .channels = 1};
    CapData d, e;
    int rc = scenes_build(&d, src_img, src_lab, NSRC, &o);
    T_OK(rc == DDPM_OK && d.img.n == 6000 && d.img.size == 28 && d.img.c == 1 && d.attr && d.img.n_classes == 10 &&
             !strcmp(d.img.class_names[9], "ankle boot"),
         "built 6000 scenes (%s)", rc ? err_msg() : "ok");
    if (rc) return;
    rc = scenes_build(&e, src_img, src_lab, NSRC, &o);
    int same = rc == DDPM_OK && !memcmp(d.img.pix, e.img.pix, 6000 * 784) && d.n_text == e.n_text &&
               !memcmp(d.cap_start, e.cap_start, 6001 * sizeof(int)) && !memcmp(d.attr, e.attr, 6000 * sizeof(SceneAttr));
    for (int i = 0; same && i < d.n_text; i++) same = !strcmp(d.text[i], e.text[i]);
    T_OK(same, "same seed: same pixels, attributes and captions");
    capdata_free(&e);
    o.seed = 12;
    scenes_build(&e, src_img, src_lab, NSRC, &o);
    int diff = 0;
    for (int i = 0; i < 6000; i++) diff += !attr_eq(&d.attr[i], &e.attr[i]);
    T_OK(diff > 4000, "another seed: %d of 6000 layouts differ (11 in 12 expected)", diff);
    capdata_free(&e);
    o.seed = 11;
    o.n = 100;
    scenes_build(&e, src_img, src_lab, NSRC, &o);
    same = e.img.n == 100 && !memcmp(e.img.pix, d.img.pix, 100 * 784) && !memcmp(e.attr, d.attr, 100 * sizeof(SceneAttr)) &&
           e.n_text == d.n_text;
    T_OK(same, "the first 100 of n = 100 equal the first 100 of n = 6000 (example i depends on (seed, i) only)");
    capdata_free(&e);

    /* pixels, attributes, captions of every example */
    int pix_ok = 1, src_ok = 1, canon_ok = 1, parse_ok = 1, ncap_ok = 1, held = 0;
    int count[10][12] = {{0}};
    uint8_t want[784];
    static const char *pos_name[5] = {"top left", "top right", "bottom left", "bottom right", "center"};
    for (int i = 0; i < 6000; i++) {
        const SceneAttr *a = &d.attr[i];
        src_ok &= a->src == i % NSRC && a->cls == src_lab[a->src] && d.img.labels[i] == a->cls;
        expect_scene(want, src_img + a->src * 784, a);
        if (memcmp(want, d.img.pix + i * 784, 784)) {
            if (pix_ok) printf("  example %d differs from the expected scene\n", i);
            pix_ok = 0;
        }
        char canon[128];
        static const char *cls_name[10] = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                           "sandal",  "shirt",   "sneaker",  "bag",   "ankle boot"};
        if (a->size == SCENE_LARGE)
            snprintf(canon, sizeof canon, "a large %s %s", a->tone ? "faint" : "bright", cls_name[a->cls]);
        else
            snprintf(canon, sizeof canon, "a small %s %s in the %s", a->tone ? "faint" : "bright", cls_name[a->cls],
                     pos_name[a->pos]);
        canon_ok &= !strcmp(capdata_caption(&d, i, 0), canon);
        int k = capdata_n_captions(&d, i);
        ncap_ok &= k >= 2 && k <= SCENE_MAX_CAPTIONS && (a->size == SCENE_LARGE || k == 4);
        for (int j = 0; j < k; j++) {
            SceneAttr p;
            parse_ok &= scenes_parse(capdata_caption(&d, i, j), &p) && attr_eq(&p, a);
        }
        for (int h = 0; h < N_HELD_OUT; h++) held += !strcmp(canon, HELD_OUT[h]);
        count[a->cls][a->size == SCENE_LARGE ? 10 + a->tone : 2 * a->pos + a->tone]++;
    }
    T_OK(src_ok, "example i uses source i mod n_src, its class and label");
    T_OK(pix_ok, "every pixel equals the definition (box 2x, placement, faint = round(0.4 v)), checked independently");
    T_OK(canon_ok, "first caption is canonical: \"a {small|large} {bright|faint} {class}[ in the {position}]\"");
    T_OK(ncap_ok, "paraphrases: 4 captions for small items, 2-3 for large ones");
    T_OK(parse_ok, "every caption parses back to its example's attributes");
    T_OK(held == 0, "no example has a held-out canonical caption (%d)", held);
    T_OK(count[1][2 * SCENE_BOTTOM_RIGHT + 0] == 0 && count[8][10 + 1] == 0 && count[7][2 * SCENE_CENTER + 1] == 0,
         "held-out configurations never drawn: trouser small bright bottom right %d, bag large faint %d, sneaker small faint center %d",
         count[1][6], count[8][11], count[7][9]);
    /* each class has 3 sources of 30, 600 examples over its 12 (or 11) configurations */
    int lo = 1 << 30, hi = 0;
    for (int c = 0; c < 10; c++)
        for (int k = 0; k < 12; k++) {
            int held_here = (c == 1 && k == 6) || (c == 8 && k == 11) || (c == 7 && k == 9);
            if (held_here) continue;
            if (count[c][k] < lo) lo = count[c][k];
            if (count[c][k] > hi) hi = count[c][k];
        }
    /* binomial(600, 1/11 or 1/12): mean 50-55, sd ~7: 6 sd */
    T_OK(lo >= 8 && hi <= 100, "the other configurations are all drawn, uniformly: %d..%d per (class, configuration)", lo, hi);
    const char *ex[] = {"a small faint sneaker in the top left", "A faint small sneaker in the top left",
                        "a small faint sneaker in the upper left", "in the top left, a small faint sneaker"};
    int exok = 1;
    for (int j = 0; j < 4; j++) {
        SceneAttr p;
        exok &= scenes_parse(ex[j], &p) && p.cls == 7 && p.size == SCENE_SMALL && p.pos == SCENE_TOP_LEFT &&
                p.tone == SCENE_FAINT;
    }
    SceneAttr p;
    T_OK(exok, "the four phrasings of a small faint sneaker in the top left parse");
    T_OK(scenes_parse("a large bright handbag", &p) && p.cls == 8 && p.size == SCENE_LARGE && p.pos == -1 &&
             scenes_parse("a small bright trousers in the middle", &p) && p.cls == 1 && p.pos == SCENE_CENTER &&
             scenes_parse("a large faint ankle boot", &p) && p.cls == 9 && scenes_parse("a large faint boot", &p) && p.cls == 9,
         "synonyms parse: handbag, trousers, middle, boot");
    T_OK(!scenes_parse("a small bright bag", &p) && !scenes_parse("a large bright bag in the center", &p) &&
             !scenes_parse("a bag", &p) && !scenes_parse("", &p),
         "not scenes: small without position, large with one, a bare class, empty");

    /* the pool's vocabulary covers the held-out captions (they are prompts at sampling) */
    Vocab v;
    rc = text_vocab_build(&v, (const char *const *)d.text, d.n_text);
    int enc_ok = rc == DDPM_OK;
    for (int h = 0; h < N_HELD_OUT && enc_ok; h++) {
        int32_t ids[16];
        int n;
        enc_ok = text_encode(&v, HELD_OUT[h], 16, ids, NULL, &n, NULL, 1) == DDPM_OK && n >= 5;
    }
    T_OK(enc_ok, "held-out captions encode with the training vocabulary (%d words)", v.n - TEXT_N_SPECIAL);
    int longest = 0;
    for (int i = 0; i < d.n_text; i++) {
        TextTokens t = {0};
        text_tokenize(&t, d.text[i], strlen(d.text[i]));
        if (t.n > longest) longest = t.n;
        text_tokens_free(&t);
    }
    T_OK(longest == 10, "longest scenes caption: %d tokens (+ <bos>: max_len 11 keeps all)", longest);
    text_vocab_free(&v);

    /* no held-out list: those configurations do occur, so the check above could fail */
    o.n_held_out = 0;
    o.n = 6000;
    scenes_build(&e, src_img, src_lab, NSRC, &o);
    int occ = 0;
    for (int i = 0; i < 6000; i++)
        for (int h = 0; h < N_HELD_OUT; h++) occ += !strcmp(capdata_caption(&e, i, 0), HELD_OUT[h]);
    T_OK(occ > 60, "without held-out captions those scenes occur %d times", occ);
    capdata_free(&e);
    o.paraphrase = 0;
    scenes_build(&e, src_img, src_lab, NSRC, &o);
    T_OK(e.cap_start[6000] == 6000 && e.n_text == 120, "paraphrase off: 1 caption each, 120 in the pool (%d)", e.n_text);
    capdata_free(&e);

    /* held-out given in another phrasing holds out the whole configuration */
    const char *h1[] = {"In the middle, a small faint sneaker"};
    o.held_out = h1, o.n_held_out = 1, o.paraphrase = 1;
    rc = scenes_build(&e, src_img, src_lab, NSRC, &o);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "held-out caption \"In the middle, a small faint sneaker\" is not a scenes caption"),
         "position-first uses the canonical position name: %s", err_msg());
    const char *h2[] = {"A small faint sneaker in the middle"};
    o.held_out = h2;
    rc = scenes_build(&e, src_img, src_lab, NSRC, &o);
    int none = rc == DDPM_OK;
    for (int i = 0; none && i < e.img.n; i++)
        none = !(e.attr[i].cls == 7 && e.attr[i].size == SCENE_SMALL && e.attr[i].pos == SCENE_CENTER && e.attr[i].tone);
    T_OK(none, "a paraphrased held-out caption removes its configuration");
    capdata_free(&e);
    const char *h3[12];
    char hb[12][64];
    for (int k = 0; k < 12; k++) {
        if (k < 10) snprintf(hb[k], 64, "a small %s bag in the %s", k % 2 ? "faint" : "bright", pos_name[k / 2]);
        else snprintf(hb[k], 64, "a large %s handbag", k % 2 ? "faint" : "bright");
        h3[k] = hb[k];
    }
    o.held_out = h3, o.n_held_out = 12;
    rc = scenes_build(&e, src_img, src_lab, NSRC, &o);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "leave no scene of class bag"), "all 12 of bag held out: %s", err_msg());
    o.n_held_out = 11;
    rc = scenes_build(&e, src_img, src_lab, NSRC, &o);
    int only = rc == DDPM_OK;
    for (int i = 0; only && i < e.img.n; i++)
        if (e.attr[i].cls == 8) only = e.attr[i].size == SCENE_LARGE && e.attr[i].tone == SCENE_FAINT;
    T_OK(only, "11 of bag's 12 held out: every bag is the remaining large faint one");
    capdata_free(&e);

    /* size and channels */
    o.held_out = NULL, o.n_held_out = 0, o.n = 50, o.channels = 3;
    rc = scenes_build(&e, src_img, src_lab, NSRC, &o);
    int rgb = rc == DDPM_OK && e.img.c == 3;
    for (int i = 0; rgb && i < 50 * 784; i++) {
        const uint8_t *q = e.img.pix + 3 * i;
        rgb = q[0] == q[1] && q[1] == q[2];
    }
    uint8_t g[784];
    if (rgb) {
        scenes_render(g, src_img + e.attr[3].src * 784, &e.attr[3]);
        for (int i = 0; i < 784 && rgb; i++) rgb = e.img.pix[3 * 784 * 3 + 3 * i] == g[i];
    }
    T_OK(rgb, "channels 3: the grey scene in all three channels");
    capdata_free(&e);
    o.channels = 1, o.size = 14;
    rc = scenes_build(&e, src_img, src_lab, NSRC, &o);
    T_OK(rc == DDPM_OK && e.img.size == 14 && e.img.n == 50, "size 14: resized");
    capdata_free(&e);
    o.size = 28;
    int badlab[NSRC];
    memcpy(badlab, src_lab, sizeof badlab);
    badlab[4] = 10;
    rc = scenes_build(&e, src_img, badlab, NSRC, &o);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "source image 4 has label 10"), "label 10: %s", err_msg());
    capdata_free(&d);
}

static void test_scenes_real(void) {
    printf("scenes (Fashion-MNIST)\n");
    const char *p = SCENES_DEFAULT_PATH "/train-images-idx3-ubyte.gz";
    if (!path_exists(p)) {
        printf("  note: %s missing (Debian package dataset-fashion-mnist); real scenes not checked\n", p);
        return;
    }
    ScenesOpts o = {.n = 3000, .seed = 0, .held_out = HELD_OUT, .n_held_out = N_HELD_OUT,
                    .paraphrase = 1, .size = 28, .channels = 1};
    CapData d;
    int rc = scenes_load(&d, &o);
    T_OK(rc == DDPM_OK && d.img.n == 3000, "3000 scenes from Fashion-MNIST train (%s)", rc ? err_msg() : "ok");
    if (rc) return;
    Dataset fm;
    dataset_load_idx(&fm, SCENES_DEFAULT_PATH, 28, 1, 3000);
    int ok = 1, outside = 0, inside = 0;
    uint8_t want[784];
    for (int i = 0; i < 3000; i++) {
        const SceneAttr *a = &d.attr[i];
        ok &= a->src == i && a->cls == fm.labels[i];
        expect_scene(want, fm.pix + (size_t)i * 784, a);
        ok &= !memcmp(want, d.img.pix + (size_t)i * 784, 784);
        if (a->size == SCENE_SMALL) { /* ink only inside the item's 14x14 box */
            static const int rc0[5][2] = {{0, 0}, {0, 14}, {14, 0}, {14, 14}, {7, 7}};
            for (int y = 0; y < 28; y++)
                for (int x = 0; x < 28; x++) {
                    int in = y >= rc0[a->pos][0] && y < rc0[a->pos][0] + 14 && x >= rc0[a->pos][1] && x < rc0[a->pos][1] + 14;
                    int v = d.img.pix[(size_t)i * 784 + y * 28 + x];
                    if (!in) outside += v != 0;
                    else inside += v;
                }
        }
    }
    T_OK(ok, "sources in order, labels, pixels as defined");
    T_OK(outside == 0 && inside > 0, "small items: no ink outside their box (%d pixels)", outside);
    printf("  e.g. %s | %s | %s\n", capdata_caption(&d, 0, 0), capdata_caption(&d, 1, 0), capdata_caption(&d, 2, 2));
    dataset_free(&fm);
    capdata_free(&d);
    o.path = "/nonexistent/fashion";
    rc = scenes_load(&d, &o);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "/nonexistent/fashion: IDX file or folder not found"),
         "missing Fashion-MNIST: %s", err_msg());
}

int main(void) {
    test_tokenizer();
    test_vocab();
    test_encode();
    test_pick();
    test_jsonl();
    test_folder();
    test_scenes_synthetic();
    test_scenes_real();
    nftw(t_tmpdir(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return t_done();
}

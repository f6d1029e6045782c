/* text: word-level tokenizer, vocabulary (build, lookup, serialise, validated read) and
 * caption encoding with padding, truncation and unknown-word suggestions. The rules are
 * documented in include/ddpm/text.h. */
#include "ddpm/text.h"

#include <stdlib.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/fsio.h"

static const char *const SPECIALS[TEXT_N_SPECIAL] = {"<pad>", "<unk>", "<bos>"};

static char *dup_n(const char *s, size_t n) {
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* ------------------------------------------------------------------------------------------ */
/* Tokens */

static int is_sep(unsigned char c) { return c <= 0x20 || c == 0x7f; }
static int is_word(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}
static int is_joiner(unsigned char c) { return c == '-' || c == '\''; }

static void push(TextTokens *t, char *s) {
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 16;
        char **p = realloc(t->tok, sizeof *p * (size_t)t->cap);
        CHECK(p, "out of memory");
        t->tok = p;
    }
    t->tok[t->n++] = s;
}

void text_tokenize(TextTokens *t, const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = u[i];
        if (is_sep(c)) {
            i++;
        } else if (is_word(c)) {
            size_t j = i + 1;
            while (j < len && (is_word(u[j]) || (is_joiner(u[j]) && j + 1 < len && is_word(u[j + 1])))) j++;
            char *w = dup_n(s + i, j - i);
            for (char *p = w; *p; p++)
                if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
            push(t, w);
            i = j;
        } else {
            push(t, dup_n(s + i, 1));
            i++;
        }
    }
}

void text_tokens_free(TextTokens *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) free(t->tok[i]);
    free(t->tok);
    memset(t, 0, sizeof *t);
}


int text_check_caption(const char *s, size_t n, const char *where) {
    if (memchr(s, 0, n)) return err_set(DDPM_EUSAGE, "%s: caption contains a NUL character", where);
    if (!utf8_valid(s, n))
        return err_set(DDPM_EUSAGE, "%s: caption is not valid UTF-8 (save the file as UTF-8)", where);
    TextTokens t = {0};
    text_tokenize(&t, s, n);
    int rc = DDPM_OK;
    if (t.n == 0) rc = err_set(DDPM_EUSAGE, "%s: caption is empty (give every image a caption with words)", where);
    for (int i = 0; i < t.n && !rc; i++) {
        size_t l = strlen(t.tok[i]);
        if (l > TEXT_MAX_WORD)
            rc = err_set(DDPM_EUSAGE, "%s: caption word \"%.40s...\" is %zu bytes, longer than the %d a word may have",
                         where, t.tok[i], l, TEXT_MAX_WORD);
    }
    text_tokens_free(&t);
    return rc;
}

char *text_normalize(const char *s) {
    TextTokens t = {0};
    text_tokenize(&t, s, strlen(s));
    size_t len = 1;
    for (int i = 0; i < t.n; i++) len += strlen(t.tok[i]) + 1;
    char *out = xmalloc(len), *p = out;
    for (int i = 0; i < t.n; i++) {
        if (i) *p++ = ' ';
        size_t l = strlen(t.tok[i]);
        memcpy(p, t.tok[i], l);
        p += l;
    }
    *p = 0;
    text_tokens_free(&t);
    return out;
}

/* ------------------------------------------------------------------------------------------ */
/* Vocabulary */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void text_vocab_free(Vocab *v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) free(v->words[i]);
    free(v->words);
    memset(v, 0, sizeof *v);
}

int text_vocab_build(Vocab *out, const char *const *captions, int n) {
    memset(out, 0, sizeof *out);
    TextTokens all = {0};
    int rc = DDPM_OK;
    for (int i = 0; i < n && !rc; i++) {
        char where[32];
        snprintf(where, sizeof where, "caption %d", i);
        size_t len = strlen(captions[i]);
        rc = text_check_caption(captions[i], len, where);
        if (!rc) text_tokenize(&all, captions[i], len);
    }
    if (rc) {
        text_tokens_free(&all);
        return rc;
    }
    if (all.n) qsort(all.tok, (size_t)all.n, sizeof *all.tok, cmp_str);
    int k = 0; /* distinct words, moved to the front */
    for (int i = 0; i < all.n; i++) {
        if (k && !strcmp(all.tok[k - 1], all.tok[i])) free(all.tok[i]);
        else all.tok[k++] = all.tok[i];
    }
    all.n = k;
    if (k > TEXT_MAX_VOCAB - TEXT_N_SPECIAL) {
        rc = err_set(DDPM_EUSAGE, "captions hold %d distinct words, more than the %d a vocabulary may have",
                     k, TEXT_MAX_VOCAB - TEXT_N_SPECIAL);
        text_tokens_free(&all);
        return rc;
    }
    out->n = TEXT_N_SPECIAL + k;
    out->words = xmalloc(sizeof *out->words * (size_t)out->n);
    for (int i = 0; i < TEXT_N_SPECIAL; i++) out->words[i] = dup_n(SPECIALS[i], strlen(SPECIALS[i]));
    for (int i = 0; i < k; i++) out->words[TEXT_N_SPECIAL + i] = all.tok[i];
    free(all.tok);
    return DDPM_OK;
}

int text_vocab_find(const Vocab *v, const char *word) {
    int lo = TEXT_N_SPECIAL, hi = v->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(v->words[mid], word);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

char *text_vocab_write(const Vocab *v, size_t *len) {
    size_t total = 1;
    for (int i = 0; i < v->n; i++) total += strlen(v->words[i]) + 1;
    char *out = xmalloc(total), *p = out;
    for (int i = 0; i < v->n; i++) {
        if (i) *p++ = '\n';
        size_t l = strlen(v->words[i]);
        memcpy(p, v->words[i], l);
        p += l;
    }
    *p = 0;
    if (len) *len = (size_t)(p - out);
    return out;
}

/* 1 if w[0..n) is exactly one token the tokenizer would produce from it. */
static int is_single_token(const char *w, size_t n) {
    TextTokens t = {0};
    text_tokenize(&t, w, n);
    int ok = t.n == 1 && strlen(t.tok[0]) == n && !memcmp(t.tok[0], w, n);
    text_tokens_free(&t);
    return ok;
}

int text_vocab_read(Vocab *out, const char *buf, size_t n, const char *label) {
    memset(out, 0, sizeof *out);
    Vocab v = {0};
    int cap = 0, rc = DDPM_OK;
    size_t pos = 0;
    for (int line = 1;; line++) {
        const char *start = buf + pos;
        const char *nl = memchr(start, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - start) : n - pos;
        if (v.n >= TEXT_MAX_VOCAB) {
            rc = err_set(DDPM_ERUNTIME, "%s: vocabulary line %d: more than %d words (file damaged?)", label,
                         line, TEXT_MAX_VOCAB);
            break;
        }
        if (len == 0) {
            rc = err_set(DDPM_ERUNTIME, "%s: vocabulary line %d: empty word (file damaged?)", label, line);
            break;
        }
        if (len > TEXT_MAX_WORD) {
            rc = err_set(DDPM_ERUNTIME, "%s: vocabulary line %d: word of %zu bytes, more than %d (file damaged?)",
                         label, line, len, TEXT_MAX_WORD);
            break;
        }
        if (memchr(start, 0, len) || !utf8_valid(start, len)) {
            rc = err_set(DDPM_ERUNTIME, "%s: vocabulary line %d: not valid UTF-8 text (file damaged?)", label, line);
            break;
        }
        if (v.n < TEXT_N_SPECIAL) {
            const char *want = SPECIALS[v.n];
            if (len != strlen(want) || memcmp(start, want, len)) {
                rc = err_set(DDPM_ERUNTIME, "%s: vocabulary line %d: expected \"%s\", got \"%.*s\" (file damaged?)",
                             label, line, want, (int)len, start);
                break;
            }
        } else {
            if (!is_single_token(start, len)) {
                rc = err_set(DDPM_ERUNTIME,
                             "%s: vocabulary line %d: \"%.*s\" is not a single lower-case token (file damaged?)",
                             label, line, (int)len, start);
                break;
            }
            if (v.n > TEXT_N_SPECIAL) {
                const char *prev = v.words[v.n - 1];
                size_t pl = strlen(prev), m = pl < len ? pl : len;
                int c = memcmp(prev, start, m);
                if (c > 0 || (c == 0 && pl >= len)) {
                    rc = err_set(DDPM_ERUNTIME, "%s: vocabulary line %d: \"%.*s\" %s (file damaged?)", label, line,
                                 (int)len, start, c == 0 && pl == len ? "appears twice" : "is out of sorted order");
                    break;
                }
            }
        }
        if (v.n == cap) {
            cap = cap ? 2 * cap : 64;
            char **p = realloc(v.words, sizeof *p * (size_t)cap);
            CHECK(p, "out of memory");
            v.words = p;
        }
        v.words[v.n++] = dup_n(start, len);
        if (!nl) break;
        pos += len + 1;
    }
    if (!rc && v.n < TEXT_N_SPECIAL)
        rc = err_set(DDPM_ERUNTIME, "%s: vocabulary has %d lines, fewer than the %d special tokens (file damaged?)",
                     label, v.n, TEXT_N_SPECIAL);
    if (rc) {
        text_vocab_free(&v);
        return rc;
    }
    *out = v;
    return DDPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Suggestions: optimal string alignment distance over code points. */

/* Decode valid UTF-8 s into cp[] (at most max code points); returns the count. */
static int decode_cps(const char *s, uint32_t *cp, int max) {
    const uint8_t *u = (const uint8_t *)s;
    int n = 0;
    while (*u && n < max) {
        uint32_t c = *u;
        int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
        if (len > 1) c &= 0x3F >> (len - 1);
        for (int k = 1; k < len && u[k]; k++) c = (c << 6) | (u[k] & 0x3F);
        for (int k = 0; k < len && *u; k++) u++;
        cp[n++] = c;
    }
    return n;
}

static int min3(int a, int b, int c) { return a < b ? (a < c ? a : c) : (b < c ? b : c); }

#define SUGGEST_MAX TEXT_MAX_WORD /* code points compared; longer words are not suggested */

static int osa_distance(const uint32_t *a, int la, const uint32_t *b, int lb) {
    static _Thread_local int d[SUGGEST_MAX + 1][SUGGEST_MAX + 1];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int cost = a[i - 1] != b[j - 1];
            d[i][j] = min3(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < d[i][j])
                d[i][j] = d[i - 2][j - 2] + 1;
        }
    return d[la][lb];
}

const char *text_suggest(const Vocab *v, const char *word) {
    uint32_t a[SUGGEST_MAX + 1], b[SUGGEST_MAX + 1];
    if (strlen(word) > TEXT_MAX_WORD || !utf8_valid(word, strlen(word))) return NULL;
    int la = decode_cps(word, a, SUGGEST_MAX);
    int limit = la / 3 > 1 ? la / 3 : 1;
    const char *best = NULL;
    int bd = limit + 1;
    for (int i = TEXT_N_SPECIAL; i < v->n; i++) {
        int lb = decode_cps(v->words[i], b, SUGGEST_MAX);
        if (abs(la - lb) >= bd) continue; /* the distance is at least the length difference */
        int dist = osa_distance(a, la, b, lb);
        if (dist < bd) bd = dist, best = v->words[i];
    }
    return best;
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding */

int text_encode(const Vocab *v, const char *caption, int max_len, int32_t *ids, float *mask,
                int *n_tokens, char **dropped, int strict) {
    CHECK(max_len >= 1 && max_len <= TEXT_MAX_LEN, "text_encode: max_len %d out of 1..%d", max_len, TEXT_MAX_LEN);
    if (dropped) *dropped = NULL;
    size_t clen = strlen(caption);
    int valid = utf8_valid(caption, clen);
    if (strict && !valid)
        return err_set(DDPM_EUSAGE, "caption is not valid UTF-8 text");
    TextTokens t = {0};
    text_tokenize(&t, caption, clen);
    int32_t tmp[TEXT_MAX_LEN];
    int n = 1;
    tmp[0] = TEXT_BOS;
    int rc = DDPM_OK;
    for (int i = 0; i < t.n; i++) { /* every word is looked up, kept or not: no unknown one slips by */
        int id = text_vocab_find(v, t.tok[i]);
        if (id < 0 && strict) {
            const char *s = text_suggest(v, t.tok[i]);
            if (s) rc = err_set(DDPM_EUSAGE, "unknown word \"%.80s\" (did you mean \"%s\"?)", t.tok[i], s);
            else
                rc = err_set(DDPM_EUSAGE, "unknown word \"%.80s\" (not one of the model's %d words)", t.tok[i],
                             v->n - TEXT_N_SPECIAL);
            break;
        }
        if (n < max_len) tmp[n++] = id < 0 ? TEXT_UNK : id;
    }
    if (!rc && t.n + 1 > max_len && dropped) {
        size_t len = 1;
        for (int i = max_len - 1; i < t.n; i++) len += strlen(t.tok[i]) + 1;
        char *d = xmalloc(len), *p = d;
        for (int i = max_len - 1; i < t.n; i++) {
            if (i > max_len - 1) *p++ = ' ';
            size_t l = strlen(t.tok[i]);
            memcpy(p, t.tok[i], l);
            p += l;
        }
        *p = 0;
        *dropped = d;
    }
    text_tokens_free(&t);
    if (rc) return rc;
    for (int i = 0; i < max_len; i++) {
        ids[i] = i < n ? tmp[i] : TEXT_PAD;
        if (mask) mask[i] = i < n ? 1.0f : 0.0f;
    }
    if (n_tokens) *n_tokens = n;
    return DDPM_OK;
}

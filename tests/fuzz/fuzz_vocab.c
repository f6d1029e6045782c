/* libFuzzer: the vocabulary a text model reads back from its checkpoint (text_vocab_read),
 * and the tokenizer and encoder on the same bytes as a caption. A vocabulary is accepted only
 * in exactly the form text_vocab_write produces, so an accepted input must write back to the
 * same bytes, with every word found at its own id. Any input as a caption: tokenizing its
 * normal form gives the same tokens, and encoding (strict or not) gives ids inside the
 * vocabulary, or one error line. */
#include "ddpm/text.h"
#include "fuzz.h"

static const char *const WORDS[] = {"a small faint sneaker in the top left", "a large bright bag", "t-shirt, don't"};

static void check_encode(const Vocab *v, const char *caption, int max_len) {
    int32_t ids[64];
    float mask[64];
    int n = -1;
    char *dropped = NULL;
    for (int strict = 0; strict < 2; strict++) {
        int rc = text_encode(v, caption, max_len, ids, mask, &n, &dropped, strict);
        if (rc) {
            if (!strict) abort(); /* not strict never fails */
            fz_check_error(rc);
            continue;
        }
        if (n < 1 || n > max_len || ids[0] != TEXT_BOS) abort();
        for (int i = 0; i < max_len; i++) {
            if (ids[i] < 0 || ids[i] >= v->n || (i < n) != (mask[i] == 1.0f)) abort();
            if (i >= n && ids[i] != TEXT_PAD) abort();
            if (i > 0 && i < n && (ids[i] == TEXT_PAD || ids[i] == TEXT_BOS)) abort();
            if (strict && ids[i] == TEXT_UNK) abort();
        }
        free(dropped);
        dropped = NULL;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    Vocab v;
    int rc = text_vocab_read(&v, (const char *)data, n, "fuzz.safetensors");
    if (rc) {
        fz_check_error(rc);
        if (v.n || v.words) abort();
        if (text_vocab_build(&v, WORDS, 3)) abort();
    } else {
        size_t len;
        char *s = text_vocab_write(&v, &len);
        if (len != n || memcmp(s, data, n)) abort();
        free(s);
        for (int i = TEXT_N_SPECIAL; i < v.n; i++)
            if (text_vocab_find(&v, v.words[i]) != i) abort();
    }
    char *text = malloc(n + 1);
    memcpy(text, data, n);
    text[n] = 0;
    /* tokens: none empty, and the normal form tokenizes to the same tokens */
    TextTokens a = {0}, b = {0};
    text_tokenize(&a, text, strlen(text));
    char *norm = text_normalize(text);
    text_tokenize(&b, norm, strlen(norm));
    if (a.n != b.n) abort();
    for (int i = 0; i < a.n; i++)
        if (!a.tok[i][0] || strcmp(a.tok[i], b.tok[i])) abort();
    text_tokens_free(&a);
    text_tokens_free(&b);
    free(norm);
    check_encode(&v, text, 1 + (int)(n % 64));
    const char *s = text_suggest(&v, text);
    if (s && text_vocab_find(&v, s) < 0) abort();
    free(text);
    text_vocab_free(&v);
    return 0;
}

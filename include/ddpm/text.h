/* text: the word-level tokenizer and the vocabulary a text-conditioned model keeps in its
 * checkpoint.
 *
 * Tokens. A caption is split into tokens, left to right:
 *  - separators: ASCII whitespace and ASCII control bytes; they end a token and vanish;
 *  - word characters: ASCII letters (lower-cased: 'A'..'Z' -> 'a'..'z'), digits, and every
 *    byte >= 0x80 (so any non-ASCII letter, e.g. "é" or "’", is part of a word and kept as it
 *    is: only ASCII is case-folded);
 *  - '-' and '\'' join: inside a word, followed by a word character, they belong to the word,
 *    so "T-shirt" -> "t-shirt", "don't" -> "don't", "x-ray-proof" -> "x-ray-proof";
 *  - any other ASCII punctuation (and a '-' or '\'' that does not join) is a token of its own:
 *    "A red bag, faint." -> "a" "red" "bag" "," "faint" ".".
 * Tokenizing never fails: it accepts any bytes. Captions are checked separately
 * (text_check_caption) where they are read, so the error can name the file and line.
 *
 * Ids. 0 = <pad>, 1 = <unk> (a word the vocabulary does not hold, only when encoding is not
 * strict), 2 = <bos> (first position of every encoded caption, so the empty caption is
 * [<bos>] and no attention row ever sees only padding), 3.. = the words, sorted bytewise
 * (strcmp), which makes the vocabulary a pure function of the set of words in the captions.
 *
 * Encoding to max_len positions: ids = [<bos>, w1, ..., wk, <pad>, ...] with
 * k <= max_len - 1; n_tokens = k + 1 (the real positions are 0..n_tokens-1; the padding mask
 * is position < n_tokens). Words past max_len - 1 are dropped and returned, so the caller can
 * warn with them.
 *
 * Serialised form (e.g. a safetensors metadata value): every word in id order, one per line,
 * specials included: "<pad>\n<unk>\n<bos>\nbag\nfaint\n...", no trailing newline. The reader
 * accepts nothing else: exactly those three specials first, then words that are valid UTF-8,
 * 1..TEXT_MAX_WORD bytes, each a single token as the tokenizer would produce it (lower-case,
 * no separators), in strictly increasing strcmp order (so no duplicates), at most
 * TEXT_MAX_VOCAB ids in all. */
#ifndef DDPM_TEXT_H
#define DDPM_TEXT_H

#include <stddef.h>
#include <stdint.h>

enum { TEXT_PAD = 0, TEXT_UNK = 1, TEXT_BOS = 2, TEXT_N_SPECIAL = 3 };
#define TEXT_MAX_WORD 64        /* bytes in one word (a longer one is a caption error) */
#define TEXT_MAX_VOCAB 65536    /* ids, specials included */
#define TEXT_MAX_LEN 1024       /* largest max_len text_encode accepts */

/* ------------------------------------------------------------------------------------------ */
/* Tokens */

typedef struct {
    int n, cap;
    char **tok;      /* n NUL-terminated tokens, malloc'd */
} TextTokens;

/* Split s[0..len) into tokens (rules above), appending to *t (zero it first). Never fails. */
void text_tokenize(TextTokens *t, const char *s, size_t len);
void text_tokens_free(TextTokens *t);


/* Check a caption read from a dataset: valid UTF-8, at least one token, every token at most
 * TEXT_MAX_WORD bytes. DDPM_EUSAGE with "<where>: <what is wrong>" otherwise; `where` is e.g.
 * "data/metadata.jsonl:12". */
int text_check_caption(const char *s, size_t n, const char *where);

/* The caption's tokens joined by single spaces (malloc'd): "A  Red bag," -> "a red bag ,".
 * Two captions with the same normal form encode to the same ids. */
char *text_normalize(const char *s);

/* ------------------------------------------------------------------------------------------ */
/* Vocabulary */

typedef struct {
    int n;           /* ids, specials included */
    char **words;    /* words[id], malloc'd; words[0..2] = "<pad>", "<unk>", "<bos>" */
} Vocab;

/* Every distinct token of the n captions, sorted, after the specials. DDPM_EUSAGE when a
 * caption fails text_check_caption (where = "caption <i>") or the words exceed
 * TEXT_MAX_VOCAB. */
int text_vocab_build(Vocab *v, const char *const *captions, int n);
void text_vocab_free(Vocab *v);
/* Id of a word (a single token), or -1. */
int text_vocab_find(const Vocab *v, const char *word);

/* The serialised form (malloc'd, NUL-terminated; *len = strlen, may be NULL). */
char *text_vocab_write(const Vocab *v, size_t *len);
/* Parse buf[0..n) (any bytes). DDPM_ERUNTIME "<label>: vocabulary line <k>: <what>" when it
 * is not exactly what text_vocab_write produces for some vocabulary; v is then empty. */
int text_vocab_read(Vocab *v, const char *buf, size_t n, const char *label);

/* ------------------------------------------------------------------------------------------ */
/* Encoding */

/* Encode a caption into ids[0..max_len) (layout above) and *n_tokens. mask (may be NULL)
 * gets 1.0f at real positions and 0.0f at padding. Words beyond max_len - 1 are dropped:
 * *dropped (may be NULL) receives them joined by spaces (malloc'd; NULL when none).
 * strict = 1: a word missing from the vocabulary is an error,
 *   DDPM_EUSAGE `unknown word "snekaer" (did you mean "sneaker"?)` (the suggestion is the
 *   nearest word by edit distance, when one is close), and a caption that is not valid UTF-8
 *   is DDPM_EUSAGE too;
 * strict = 0: unknown words (and invalid UTF-8) become <unk>, never an error.
 * max_len must be in 1..TEXT_MAX_LEN. */
int text_encode(const Vocab *v, const char *caption, int max_len, int32_t *ids, float *mask,
                int *n_tokens, char **dropped, int strict);

/* The vocabulary word nearest to `word` by edit distance (optimal string alignment over code
 * points: insert, delete, substitute, swap two neighbours, each 1), if within
 * max(1, len/3) edits (len in code points); ties go to the lower id. NULL when none is. */
const char *text_suggest(const Vocab *v, const char *word);

#endif

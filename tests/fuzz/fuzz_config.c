/* libFuzzer: the config parser. Any text either parses, validates and round-trips through
 * config_to_json exactly, and the model it describes can be planned (sizes, FLOPs, memory,
 * without allocating) — or it is refused with one line (exit code 2 in the CLI). The same
 * bytes are also tried as a --set assignment. */
#include "ddpm/config.h"
#include "ddpm/unet.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char *text = malloc(n + 1);
    memcpy(text, data, n);
    text[n] = 0;
    Config c, d;
    config_defaults(&c);
    int rc = config_parse(&c, text, "fuzz.json");
    if (!rc) rc = config_validate(&c);
    if (rc) {
        if (rc != DDPM_EUSAGE) abort();
        fz_check_error(rc);
    } else {
        char *js = config_to_json(&c);
        config_defaults(&d);
        if (config_parse(&d, js, "roundtrip") || config_validate(&d) || memcmp(&c, &d, sizeof c)) {
            fprintf(stderr, "config does not round-trip: %s\n", js);
            abort();
        }
        free(js);
        UNet u;
        rc = unet_plan(&u, &c, 1, 1);
        if (rc) fz_check_error(rc);
        else unet_free(&u);
    }
    config_defaults(&c);
    rc = config_set(&c, text);
    if (rc) fz_check_error(rc);
    free(text);
    return 0;
}

/* libFuzzer: image files (PNG, JPEG, anything stb_image sniffs) through image_load and the
 * center-crop + resize the folder dataset applies. stb itself is Debian's libstb.so, not
 * instrumented: this checks ddpm's side of the contract (sizes, channel conversion,
 * errors), while ASan still sees every heap block stb hands back. */
#include "ddpm/image.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    const char *p = fz_file("x.img", data, n);
    int channels = n % 2 ? 3 : 1;
    Image img;
    int rc = image_load(&img, p, channels);
    if (rc) {
        fz_check_error(rc);
        return 0;
    }
    if (img.w < 1 || img.h < 1 || img.c != channels) abort();
    uint8_t out[16 * 16 * 3];
    image_crop_resize(out, img.pix, img.w, img.h, img.c, 1 + (int)(n % 16));
    image_free(&img);
    return 0;
}

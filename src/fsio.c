#include "ddpm/fsio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/err.h"

int atomic_open(AtomicFile *af, const char *path) {
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 32;
    af->path = strdup(path);
    af->tmp = xmalloc(n);
    snprintf(af->tmp, n, "%s.tmp.%d", path, (int)getpid());
    af->fp = fopen(af->tmp, "wb");
    if (!af->fp) {
        int e = errno;
        free(af->path);
        free(af->tmp);
        af->path = af->tmp = NULL;
        return err_set(DDPM_ERUNTIME, "%s: cannot create: %s", path, strerror(e));
    }
    return DDPM_OK;
}

static void fsync_dir_of(const char *path) {
    char *copy = strdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

int atomic_commit(AtomicFile *af) {
    int rc = DDPM_OK;
    int bad = ferror(af->fp) || fflush(af->fp) != 0 || fsync(fileno(af->fp)) != 0;
    int e = errno;
    if (fclose(af->fp) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    af->fp = NULL;
    if (bad) {
        unlink(af->tmp);
        rc = err_set(DDPM_ERUNTIME, "%s: write failed: %s", af->path, strerror(e ? e : EIO));
    } else if (rename(af->tmp, af->path) != 0) {
        e = errno;
        unlink(af->tmp);
        rc = err_set(DDPM_ERUNTIME, "%s: cannot rename into place: %s", af->path, strerror(e));
    } else {
        fsync_dir_of(af->path);
    }
    free(af->path);
    free(af->tmp);
    af->path = af->tmp = NULL;
    return rc;
}

void atomic_abort(AtomicFile *af) {
    if (af->fp) fclose(af->fp);
    if (af->tmp) unlink(af->tmp);
    free(af->path);
    free(af->tmp);
    memset(af, 0, sizeof *af);
}

int atomic_write(const char *path, const void *data, size_t n) {
    AtomicFile af;
    int rc = atomic_open(&af, path);
    if (rc) return rc;
    if (n && fwrite(data, 1, n, af.fp) != n) {
        int e = errno;
        atomic_abort(&af);
        return err_set(DDPM_ERUNTIME, "%s: write failed: %s", path, strerror(e));
    }
    return atomic_commit(&af);
}

int file_read_all(const char *path, char **out, size_t *size) {
    *out = NULL;
    if (size) *size = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return err_set(DDPM_ERUNTIME, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return err_set(DDPM_ERUNTIME, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    char *buf = xmalloc(n + 1);
    if (fread(buf, 1, n, fp) != n) {
        fclose(fp);
        free(buf);
        return err_set(DDPM_ERUNTIME, "%s: read failed", path);
    }
    fclose(fp);
    buf[n] = 0;
    *out = buf;
    if (size) *size = n;
    return DDPM_OK;
}

int mkdir_p(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    size_t len = strlen(buf);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return err_set(DDPM_ERUNTIME, "%s: cannot create folder: %s", buf, strerror(errno));
            buf[i] = c;
        }
    }
    if (!is_dir(path)) return err_set(DDPM_ERUNTIME, "%s: exists and is not a folder", path);
    return DDPM_OK;
}

int path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *path_join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *p = xmalloc(na + nb + 2);
    memcpy(p, a, na);
    size_t k = na;
    if (na && a[na - 1] != '/') p[k++] = '/';
    memcpy(p + k, b, nb + 1);
    return p;
}

int utf8_valid(const char *str, size_t n) {
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

/*
 * INCRBYFLOAT exactly as Redis computes it: in C `long double` (x87 80-bit extended precision on
 * x86_64), parsed with strtold under Redis's string2ld rules and printed with ld2string's
 * LD_STR_HUMAN mode ("%.17Lf", trailing zeros and point removed, "-0" shown as "0").
 * Rust has no long double, and f64 gives different answers past 2^53
 * (9223372036854775806 + 1 must print 9223372036854775807).
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Redis's MAX_LONG_DOUBLE_CHARS: longest text of a long double it parses or prints. */
#define CAIRN_LD_CHARS_MAX (5 * 1024)

/* Redis's string2ld: the whole input must be a long double, no leading space, not NaN,
 * no overflow to infinity or underflow to zero with ERANGE. Returns 1 on success. */
static int cairn_string2ld(const char *s, size_t slen, long double *dp) {
    char buf[CAIRN_LD_CHARS_MAX];
    char *eptr;
    long double value;
    if (slen == 0 || slen >= sizeof(buf)) return 0;
    memcpy(buf, s, slen);
    buf[slen] = '\0';
    errno = 0;
    value = strtold(buf, &eptr);
    if (isspace((unsigned char)buf[0]) || eptr[0] != '\0' || (size_t)(eptr - buf) != slen ||
        (errno == ERANGE &&
         (value == HUGE_VALL || value == -HUGE_VALL || fpclassify(value) == FP_ZERO)) ||
        errno == EINVAL || isnan(value))
        return 0;
    *dp = value;
    return 1;
}

int cairn_ld_valid(const char *s, size_t len) {
    long double v;
    return cairn_string2ld(s, len, &v);
}

/* Result codes shared with numeric/long_double.rs. */
#define CAIRN_LD_OK 0
#define CAIRN_LD_NOT_FLOAT 1
#define CAIRN_LD_NAN_OR_INF 2
#define CAIRN_LD_NO_ROOM 3

/* current (or 0 when has_current is 0) + increment, printed into out. */
int cairn_ld_incrby(const char *cur, size_t cur_len, int has_current, const char *incr,
                    size_t incr_len, char *out, size_t out_cap, size_t *out_len) {
    long double value = 0, by;
    int l;
    if (has_current && !cairn_string2ld(cur, cur_len, &value)) return CAIRN_LD_NOT_FLOAT;
    if (!cairn_string2ld(incr, incr_len, &by)) return CAIRN_LD_NOT_FLOAT;
    value += by;
    if (isnan(value) || isinf(value)) return CAIRN_LD_NAN_OR_INF;
    l = snprintf(out, out_cap, "%.17Lf", value);
    if (l < 0 || (size_t)l + 1 > out_cap) return CAIRN_LD_NO_ROOM;
    if (strchr(out, '.') != NULL) {
        char *p = out + l - 1;
        while (*p == '0') {
            p--;
            l--;
        }
        if (*p == '.') l--;
    }
    if (l == 2 && out[0] == '-' && out[1] == '0') {
        out[0] = '0';
        l = 1;
    }
    *out_len = (size_t)l;
    return CAIRN_LD_OK;
}

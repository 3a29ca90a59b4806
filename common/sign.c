/* Signatures: HMAC-SHA256, constant-time comparison, the status-callback signature header and
 * HS256 JSON Web Token verification (OpenSSL libcrypto underneath). */
#include "sign.h"

#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MAC_LEN 32

int sign_equal(const void *a, size_t alen, const void *b, size_t blen)
{
  if(alen != blen) {
    /* Still walk the longer string once, as a real comparison of it would, so that a length
     * mismatch costs what a late mismatch costs. CRYPTO_memcmp is an opaque call: it is not
     * optimised away. */
    const void *longer = alen > blen ? a : b;
    size_t n = alen > blen ? alen : blen;
    (void)CRYPTO_memcmp(longer, longer, n);
    return 0;
  }
  if(alen == 0)
    return 1;
  return CRYPTO_memcmp(a, b, alen) == 0;
}

/* HMAC-SHA256 with a status: 0, or -1 when libcrypto failed. */
static int hmac256(const void *key, size_t keylen, const void *data, size_t len,
                   unsigned char out[MAC_LEN])
{
  static const unsigned char nothing[1] = {0};
  unsigned int outlen = 0;
  if(keylen > INT_MAX)
    return -1;
  /* Empty inputs get a valid pointer: libcrypto versions differ on NULL with length 0. */
  if(!HMAC(EVP_sha256(), keylen ? key : nothing, (int)keylen, len ? data : nothing, len, out,
           &outlen) ||
     outlen != MAC_LEN)
    return -1;
  return 0;
}

void sign_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                      unsigned char out[32])
{
  if(hmac256(key, keylen, data, len, out))
    memset(out, 0xff, MAC_LEN);
}

static void to_hex(const unsigned char *in, size_t n, char *out)
{
  static const char digits[] = "0123456789abcdef";
  for(size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

void sign_callback_header(const char *secret, int64_t unix_s, const char *body, size_t len,
                          char *out, size_t outlen)
{
  char stamp[24], hex[2 * MAC_LEN + 1];
  unsigned char mac[MAC_LEN];
  int slen = snprintf(stamp, sizeof stamp, "%" PRId64 ".", unix_s);
  char *signed_text;
  if(!out || outlen == 0)
    return;
  out[0] = '\0';
  if(outlen < SIGN_HEADER_MAX || len > SIZE_MAX - sizeof stamp)
    return;
  /* The MAC covers "<unix_s>.<body>": the time is signed with the body, so a captured request
   * cannot be replayed later under a fresh time stamp. */
  signed_text = malloc((size_t)slen + len);
  if(!signed_text)
    return;
  memcpy(signed_text, stamp, (size_t)slen);
  if(len)
    memcpy(signed_text + slen, body, len);
  if(!hmac256(secret, secret ? strlen(secret) : 0, signed_text, (size_t)slen + len, mac)) {
    to_hex(mac, MAC_LEN, hex);
    snprintf(out, outlen, "t=%" PRId64 ",v1=%s", unix_s, hex);
  }
  free(signed_text);
}

/* ---- JWT ------------------------------------------------------------------------------------ */

static int b64url_value(unsigned char c)
{
  if(c >= 'A' && c <= 'Z')
    return c - 'A';
  if(c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if(c >= '0' && c <= '9')
    return c - '0' + 52;
  if(c == '-')
    return 62;
  if(c == '_')
    return 63;
  return -1;
}

/* Decodes unpadded base64url s[0..n) into a malloc'd buffer (caller frees) of *outlen bytes.
 * NULL when the text is not canonical base64url (padding, other characters, a dangling
 * character, or non-zero unused bits: one signature must have one spelling) or out of memory. */
static unsigned char *b64url_decode(const char *s, size_t n, size_t *outlen)
{
  unsigned char *out;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  if(n % 4 == 1)
    return NULL;
  out = malloc(n / 4 * 3 + 3);
  if(!out)
    return NULL;
  for(size_t i = 0; i < n; i++) {
    int v = b64url_value((unsigned char)s[i]);
    if(v < 0)
      goto bad;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if(bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  if(acc != 0)
    goto bad;
  *outlen = o;
  return out;
bad:
  free(out);
  return NULL;
}

/* Decodes one part of the token and parses it as a JSON object. NULL when it is not one. */
static json_t *decode_object(const char *s, size_t n)
{
  size_t len = 0;
  unsigned char *raw = b64url_decode(s, n, &len);
  json_t *obj;
  if(!raw)
    return NULL;
  /* A duplicate "alg" or "exp" could be read one way here and another way elsewhere. */
  obj = json_loadb((const char *)raw, len, JSON_REJECT_DUPLICATES, NULL);
  free(raw);
  if(obj && !json_is_object(obj)) {
    json_decref(obj);
    return NULL;
  }
  return obj;
}

/* Reads a NumericDate claim (RFC 7519 §2: seconds, integer or not). Returns 0 when absent,
 * 1 with *v set, -1 when present but not a number. */
static int numeric_date(json_t *claims, const char *name, double *v)
{
  json_t *c = json_object_get(claims, name);
  if(!c)
    return 0;
  if(!json_is_number(c))
    return -1;
  *v = json_number_value(c);
  return isfinite(*v) ? 1 : -1;
}

int sign_jwt_hs256_verify(const char *token, const char *key, int64_t now_s, int64_t leeway_s,
                          int64_t max_ahead_s, char *err, size_t errlen)
{
  const char *dot1, *dot2;
  size_t len, siglen = 0;
  unsigned char *sig = NULL, mac[MAC_LEN];
  json_t *header = NULL, *claims = NULL, *alg;
  double t, lo, hi;
  int rc = -1, kind;
  if(!token || !*token)
    return util_fail(err, errlen, "empty token");
  len = strnlen(token, SIGN_JWT_MAX + 1);
  if(len > SIGN_JWT_MAX)
    return util_fail(err, errlen, "token longer than %d bytes", SIGN_JWT_MAX);
  if(!key)
    return util_fail(err, errlen, "no key to verify with");
  dot1 = memchr(token, '.', len);
  dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
  if(!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
    return util_fail(err, errlen, "not a compact JWT (three parts separated by dots)");

  header = decode_object(token, (size_t)(dot1 - token));
  if(!header) {
    util_fail(err, errlen, "header is not a base64url-encoded JSON object");
    goto out;
  }
  alg = json_object_get(header, "alg");
  if(!json_is_string(alg) || strcmp(json_string_value(alg), "HS256")) {
    /* "none", HS512, RS256 with our key as an HMAC secret...: only what we expect passes. */
    util_fail(err, errlen, "algorithm is not HS256");
    goto out;
  }
  if(json_object_get(header, "crit")) {
    util_fail(err, errlen, "critical header extensions are not supported");
    goto out;
  }

  sig = b64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), &siglen);
  if(!sig || siglen != MAC_LEN) {
    util_fail(err, errlen, "malformed signature");
    goto out;
  }
  if(hmac256(key, strlen(key), token, (size_t)(dot2 - token), mac)) {
    util_fail(err, errlen, "cannot compute the signature");
    goto out;
  }
  if(!sign_equal(mac, MAC_LEN, sig, siglen)) {
    util_fail(err, errlen, "signature mismatch");
    goto out;
  }

  /* Only signed claims are looked at. */
  claims = decode_object(dot1 + 1, (size_t)(dot2 - dot1 - 1));
  if(!claims) {
    util_fail(err, errlen, "payload is not a base64url-encoded JSON object");
    goto out;
  }
  if(leeway_s < 0)
    leeway_s = 0;
  lo = (double)now_s - (double)leeway_s;
  hi = (double)now_s + (double)leeway_s;
  kind = numeric_date(claims, "exp", &t);
  if(kind < 0 || (kind && t < lo)) {
    util_fail(err, errlen, kind < 0 ? "exp is not a number" : "token expired");
    goto out;
  }
  if(max_ahead_s > 0 && (!kind || t > hi + (double)max_ahead_s)) {
    util_fail(err, errlen, kind ? "exp is too far ahead" : "exp is required");
    goto out;
  }
  kind = numeric_date(claims, "iat", &t);
  if(kind < 0 || (kind && t > hi)) {
    util_fail(err, errlen, kind < 0 ? "iat is not a number" : "token issued in the future");
    goto out;
  }
  kind = numeric_date(claims, "nbf", &t);
  if(kind < 0 || (kind && t > hi)) {
    util_fail(err, errlen, kind < 0 ? "nbf is not a number" : "token not valid yet");
    goto out;
  }
  rc = 0;
out:
  free(sig);
  json_decref(header);
  json_decref(claims);
  return rc;
}

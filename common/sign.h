/* Signatures: HMAC-SHA256, constant-time comparison, the status-callback signature header and
 * HS256 JSON Web Token verification (OpenSSL libcrypto underneath). Pure functions: no global
 * state, safe from any thread. */
#ifndef MSG_SIGN_H
#define MSG_SIGN_H

#include <stddef.h>
#include <stdint.h>

/* Room for "t=<unix_s>,v1=<64 hex>" with any int64_t time, and its NUL. */
#define SIGN_HEADER_MAX 96

/* Constant-time equality of two byte strings (length differences are not leaked early): the
 * time taken depends on the lengths only, never on where the first differing byte is. A length
 * of 0 allows a NULL pointer. Returns 1 when equal, 0 otherwise. */
int sign_equal(const void *a, size_t alen, const void *b, size_t blen);

/* HMAC-SHA256(key, data) into out[32]. key and data may be NULL when their length is 0. Should
 * libcrypto itself fail (it does not, short of memory exhaustion), out is filled with 0xff
 * bytes, which no compare against a real MAC accepts by accident. */
void sign_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                      unsigned char out[32]);

/* The callback signature header value "t=<unix_s>,v1=<64 lowercase hex>" where the MAC is
 * HMAC-SHA256(secret, "<unix_s>.<body>"). Writes into out[outlen >= SIGN_HEADER_MAX]; body may
 * be NULL when len is 0. When out of memory (or outlen is too small) out is set to "", which the
 * caller must treat as "could not sign". */
void sign_callback_header(const char *secret, int64_t unix_s, const char *body, size_t len,
                          char *out, size_t outlen);

/* Longest compact JWT sign_jwt_hs256_verify looks at; a longer one is refused unread. */
#define SIGN_JWT_MAX 8192

/* Verifies a compact JWT signed HS256 with `key`: header alg must be "HS256" (anything else,
 * incl. "none", refused; so is a "crit" header), signature checked in constant time, "exp"
 * (if present) not before now - leeway, "iat" (if present) not after now + leeway, "nbf" (if
 * present) not after now + leeway. With max_ahead_s > 0, "exp" is required and at most
 * max_ahead_s + leeway after now, so a token cannot be made to last for ever. The three parts
 * are unpadded base64url (RFC 7515); the claims are looked at only once the signature matched.
 * 0 when valid; -1 with a short reason in err (which never quotes the token or the key). err
 * may be NULL. */
int sign_jwt_hs256_verify(const char *token, const char *key, int64_t now_s, int64_t leeway_s,
                          int64_t max_ahead_s, char *err, size_t errlen);

#endif

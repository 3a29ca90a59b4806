/* Unit tests for common/sign.h: RFC 4231 HMAC-SHA256 vectors, the callback signature header,
 * constant-time equality and HS256 JWT verification against tokens made beforehand in Python
 * (hmac, hashlib, base64.urlsafe_b64encode without padding, compact JSON). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "sign.h"

static void hex(const unsigned char *in, size_t n, char *out)
{
  for(size_t i = 0; i < n; i++)
    snprintf(out + 2 * i, 3, "%02x", in[i]);
}

/* RFC 4231 §4.2-4.8 (test case 5 is truncated to 128 bits there: compared on its prefix). */
static void test_rfc4231(void)
{
  static const struct {
    unsigned char key_byte;
    size_t key_len;
    const char *data;
    unsigned char data_byte;
    size_t data_len;
    const char *mac;
  } vectors[] = {
    {0x0b, 20, "Hi There", 0, 0,
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
    {0, 0, "what do ya want for nothing?", 0, 0,
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
    {0xaa, 20, NULL, 0xdd, 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
    {0x01, 25, NULL, 0xcd, 50, /* key 0x01..0x19 */
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
    {0x0c, 20, "Test With Truncation", 0, 0, "a3b6167473100ee06e0c796c2955552b"},
    {0xaa, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 0, 0,
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
    {0xaa, 131,
     "This is a test using a larger than block-size key and a larger than block-size data. The "
     "key needs to be hashed before being used by the HMAC algorithm.",
     0, 0, "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
  };
  unsigned char key[131], data[64], mac[32];
  char got[65];
  for(size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
    const unsigned char *k = key, *d = data;
    size_t klen = vectors[i].key_len, dlen = vectors[i].data_len;
    if(i == 1) {
      k = (const unsigned char *)"Jefe";
      klen = 4;
    }
    else if(i == 3) {
      for(size_t j = 0; j < klen; j++)
        key[j] = (unsigned char)(j + 1);
    }
    else
      memset(key, vectors[i].key_byte, klen);
    if(vectors[i].data) {
      d = (const unsigned char *)vectors[i].data;
      dlen = strlen(vectors[i].data);
    }
    else
      memset(data, vectors[i].data_byte, dlen);
    sign_hmac_sha256(k, klen, d, dlen, mac);
    hex(mac, 32, got);
    got[strlen(vectors[i].mac)] = '\0';
    CHECK_STR(got, vectors[i].mac);
  }
  /* Empty key and empty data, NULL pointers allowed (Python: hmac.new(b"", b"data")). */
  sign_hmac_sha256(NULL, 0, "data", 4, mac);
  hex(mac, 32, got);
  CHECK_STR(got, "e528c4d99e6177f5841f712a143b90843299a4aa181a06501422d9ca862bd2a5");
out:;
}

static void test_equal(void)
{
  CHECK(sign_equal("abc", 3, "abc", 3) == 1);
  CHECK(sign_equal("abc", 3, "abd", 3) == 0);
  CHECK(sign_equal("abc", 3, "abcd", 4) == 0);
  CHECK(sign_equal("abcd", 4, "abc", 3) == 0);
  CHECK(sign_equal("", 0, "", 0) == 1);
  CHECK(sign_equal(NULL, 0, NULL, 0) == 1);
  CHECK(sign_equal(NULL, 0, "a", 1) == 0);
  CHECK(sign_equal("a\0b", 3, "a\0c", 3) == 0); /* bytes, not C strings */
  CHECK(sign_equal("a\0b", 3, "a\0b", 3) == 1);
out:;
}

/* Python: "t=1700000000,v1=" + hmac.new(b"whsec_test", b"1700000000." + body, sha256). */
static void test_callback_header(void)
{
  static const char body[] =
    "{\"event\":\"message.status\",\"task_id\":\"abc\",\"status\":\"SUCCESS\"}";
  char out[SIGN_HEADER_MAX];
  char small[SIGN_HEADER_MAX - 1];
  char *tail;
  sign_callback_header("whsec_test", 1700000000, body, strlen(body), out, sizeof out);
  CHECK_STR(out,
            "t=1700000000,v1=cf19c99fe8d66571741bc13a3e0b176bbcdf69728eabf42e7c86d2a855973430");
  /* The longest time stamp still fits. */
  sign_callback_header("s", INT64_MIN, "", 0, out, sizeof out);
  CHECK(strncmp(out, "t=-9223372036854775808,v1=", 26) == 0);
  tail = out + 26;
  CHECK(strlen(tail) == 64 && strspn(tail, "0123456789abcdef") == 64);
  /* An empty body signs "<t>." and a NULL body with length 0 is the same. */
  {
    char again[SIGN_HEADER_MAX];
    sign_callback_header("s", 5, "", 0, out, sizeof out);
    sign_callback_header("s", 5, NULL, 0, again, sizeof again);
    CHECK_STR(out, again);
  }
  /* Bodies are bytes: a NUL inside is signed too. */
  {
    char with_nul[SIGN_HEADER_MAX], cut[SIGN_HEADER_MAX];
    sign_callback_header("s", 5, "a\0b", 3, with_nul, sizeof with_nul);
    sign_callback_header("s", 5, "a", 1, cut, sizeof cut);
    CHECK(strcmp(with_nul, cut) != 0);
  }
  /* Too small a buffer is refused, not truncated into a wrong signature. */
  memset(small, 'x', sizeof small);
  sign_callback_header("s", 5, "", 0, small, sizeof small);
  CHECK(small[0] == '\0');
out:;
}

#define KEY "test-key-0123456789"
#define NOW INT64_C(1700000100)

#define T_VALID                                                                                  \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDA" \
  "zNjAwfQ.DjXgEJZkJ_MBc2esQdFrWKKGYzgXE1o5SNB8DvONtTA"
#define T_NONE                                                                                   \
  "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAzN" \
  "jAwfQ."
#define T_HS512                                                                                  \
  "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDA" \
  "zNjAwfQ.-N7RjP44aJKAa_ynvYHz17BCo6SMAXbD8odIsQt8A-fTzZFdD9oGFXPUXm_edzVE6ZFH0z2vm_tR_RNnNWoRCg"
#define T_EXPIRED                                                                                \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImlhdCI6MTY5OTk5MDAwMCwiZXhwIjoxNzAwMDA" \
  "wMDAwfQ.ZsIOmhzrS60mnSTzkomNyiWc6UssLCFr7DdEZT1_j8k"
#define T_FUTURE                                                                                 \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImlhdCI6MTcwMDAwMzcwMH0.AuhCOhRZ928jznXO" \
  "bJFWp63UWcM-tdBqkJr5mO4FPJQ"
#define T_NOCLAIMS                                                                               \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSJ9.--vBoxesEL1MGy6keBfJG4g6jmTLgRNd3tP6qF_" \
  "C7gM"
#define T_EXPSTR                                                                                 \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImV4cCI6IjE3MDAwMDM2MDAifQ.6QvvgWSxGVZr" \
  "GoRdYpvsesC385PDCEmc1R_kcfoVA_o"
#define T_LOWER "eyJhbGciOiJoczI1NiJ9.eyJzdWIiOiJ1MSJ9.nVIrMIMUKSXRTXesc65yvQeRr9THWtIIiohD9CPsaKw"
/* Header {"alg":"HS256","alg":"none"}, validly signed. */
#define T_DUPALG                                                                                 \
  "eyJhbGciOiJIUzI1NiIsImFsZyI6Im5vbmUifQ.eyJzdWIiOiJ1MSJ9.7eV4chR1outiC016xqnF9-wDQTE7SVssoAnSK" \
  "inbjUE"
#define T_CRIT                                                                                   \
  "eyJhbGciOiJIUzI1NiIsImNyaXQiOlsiZXhwIl19.eyJzdWIiOiJ1MSJ9.NhlGk7-o7SYGqDwJu-pixV9OsKIIzth4DQ3" \
  "1s1RDCgg"
/* exp 1700000070.5: valid with 30 s of leeway at NOW, expired with 29. */
#define T_REALEXP                                                                                \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImV4cCI6MTcwMDAwMDA3MC41fQ.2jmteRGcuBTE" \
  "rExnEjpcXq3bz2Xb1nRTvF83vZNG-Ls"
/* nbf 1700000200: 100 s after NOW. */
#define T_NBF                                                                                    \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsIm5iZiI6MTcwMDAwMDIwMH0.CU3ELfhWm_W8YnTw" \
  "DGVROd7qemJ6V2HRAg3DuZb5Xts"
/* T_VALID's signature on a payload saying "admin". */
#define T_TAMPERED                                                                               \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzA" \
  "wMDAzNjAwfQ.DjXgEJZkJ_MBc2esQdFrWKKGYzgXE1o5SNB8DvONtTA"

/* exp NOW + 1 h + 31 s: past the hour (with 30 s of leeway) a webhook accepts. */
#define T_FAR \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImV4cCI6MTcwMDAwMzczMX0.PBtZ2ynSY3TNyqem" \
  "3fSbIeMTSUKKispEykla-VjUy6E"
/* exp NOW + 1 h + 30 s: just within it. */
#define T_HOUR \
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImV4cCI6MTcwMDAwMzczMH0.eUiamBKWEhPbhSVO" \
  "eDnOOZWvlDWkkDk-8aW2Fyg_Dvg"

/* Verifies (exp may be any distance ahead, or absent) and compares the outcome: want_err NULL
 * means valid. */
static int verify_ahead(const char *token, const char *key, int64_t leeway, int64_t max_ahead,
                        const char *want_err)
{
  char err[128] = "";
  int rc = sign_jwt_hs256_verify(token, key, NOW, leeway, max_ahead, err, sizeof err);
  if(!want_err) {
    if(rc != 0)
      fprintf(stderr, "  expected valid, got: %s\n", err);
    return rc == 0;
  }
  if(rc != -1 || strcmp(err, want_err)) {
    fprintf(stderr, "  expected \"%s\", got rc %d \"%s\"\n", want_err, rc, err);
    return 0;
  }
  return 1;
}

static int verify(const char *token, const char *key, int64_t leeway, const char *want_err)
{
  return verify_ahead(token, key, leeway, 0, want_err);
}

/* Webhooks ask for exp at most an hour ahead: a token without one, or good for longer, could
 * be replayed for ever. */
static void test_jwt_exp_required(void)
{
  CHECK(verify_ahead(T_VALID, KEY, 30, 3600, NULL));
  CHECK(verify_ahead(T_NOCLAIMS, KEY, 30, 3600, "exp is required"));
  CHECK(verify_ahead(T_HOUR, KEY, 30, 3600, NULL));
  CHECK(verify_ahead(T_FAR, KEY, 30, 3600, "exp is too far ahead"));
  CHECK(verify_ahead(T_FAR, KEY, 30, 0, NULL));
out:;
}

static void test_jwt(void)
{
  char *long_token = NULL;
  CHECK(verify(T_VALID, KEY, 30, NULL));
  CHECK(verify(T_VALID, KEY, 0, NULL));
  CHECK(verify(T_NOCLAIMS, KEY, 0, NULL));
  CHECK(verify(T_VALID, "other-key", 30, "signature mismatch"));
  CHECK(verify(T_VALID, "", 30, "signature mismatch"));
  CHECK(verify(T_NONE, KEY, 30, "algorithm is not HS256"));
  CHECK(verify(T_HS512, KEY, 30, "algorithm is not HS256"));
  CHECK(verify(T_LOWER, KEY, 30, "algorithm is not HS256"));
  CHECK(verify(T_DUPALG, KEY, 30, "header is not a base64url-encoded JSON object"));
  CHECK(verify(T_CRIT, KEY, 30, "critical header extensions are not supported"));
  CHECK(verify(T_EXPIRED, KEY, 30, "token expired"));
  /* exp 1700000000 = NOW - 100: still accepted with 100 s of leeway, not with 99. */
  CHECK(verify(T_EXPIRED, KEY, 100, NULL));
  CHECK(verify(T_EXPIRED, KEY, 99, "token expired"));
  CHECK(verify(T_REALEXP, KEY, 30, NULL));
  CHECK(verify(T_REALEXP, KEY, 29, "token expired"));
  CHECK(verify(T_FUTURE, KEY, 30, "token issued in the future"));
  CHECK(verify(T_FUTURE, KEY, 3600, NULL));
  CHECK(verify(T_NBF, KEY, 30, "token not valid yet"));
  CHECK(verify(T_NBF, KEY, 100, NULL));
  CHECK(verify(T_EXPSTR, KEY, 30, "exp is not a number"));
  CHECK(verify(T_TAMPERED, KEY, 30, "signature mismatch"));
  /* Garbage of every shape. */
  CHECK(verify("", KEY, 30, "empty token"));
  CHECK(verify(NULL, KEY, 30, "empty token"));
  CHECK(verify("garbage", KEY, 30, "not a compact JWT (three parts separated by dots)"));
  CHECK(verify("a.b", KEY, 30, "not a compact JWT (three parts separated by dots)"));
  CHECK(verify("a.b.c.d", KEY, 30, "not a compact JWT (three parts separated by dots)"));
  CHECK(verify("..", KEY, 30, "header is not a base64url-encoded JSON object"));
  CHECK(verify("!!!.e30.e30", KEY, 30, "header is not a base64url-encoded JSON object"));
  /* "W10" is [] : JSON, but not an object. */
  CHECK(verify("W10.e30.e30", KEY, 30, "header is not a base64url-encoded JSON object"));
  /* A valid header with padding or a dangling character in the signature. */
  CHECK(verify("eyJhbGciOiJIUzI1NiJ9.e30.DjXgEJZkJ_MBc2esQdFrWKKGYzgXE1o5SNB8DvONtTA=", KEY, 30,
               "malformed signature"));
  CHECK(verify("eyJhbGciOiJIUzI1NiJ9.e30.A", KEY, 30, "malformed signature"));
  CHECK(verify("eyJhbGciOiJIUzI1NiJ9.e30.", KEY, 30, "malformed signature"));
  /* The last character of a 32-byte signature carries 2 unused bits: they must be zero, so
   * one signature has one spelling ("...tTA" is canonical, "...tTB" is not). */
  CHECK(verify(T_VALID, KEY, 30, NULL));
  {
    char twin[sizeof T_VALID];
    memcpy(twin, T_VALID, sizeof twin);
    twin[sizeof twin - 2] = 'B';
    CHECK(verify(twin, KEY, 30, "malformed signature"));
  }
  /* Longer than 8 KiB: refused before anything is decoded. */
  long_token = malloc(SIGN_JWT_MAX + 2);
  CHECK(long_token != NULL);
  memset(long_token, 'a', SIGN_JWT_MAX + 1);
  long_token[10] = '.';
  long_token[20] = '.';
  long_token[SIGN_JWT_MAX + 1] = '\0';
  CHECK(verify(long_token, KEY, 30, "token longer than 8192 bytes"));
  /* No error buffer: still refused. */
  CHECK(sign_jwt_hs256_verify(T_NONE, KEY, NOW, 30, 0, NULL, 0) == -1);
out:
  free(long_token);
}

int main(void)
{
  static const struct check_test tests[] = {{"rfc4231", test_rfc4231},
                                            {"equal", test_equal},
                                            {"callback_header", test_callback_header},
                                            {"jwt", test_jwt},
                                            {"jwt_exp_required", test_jwt_exp_required}};
  return check_run(tests, sizeof tests / sizeof tests[0]);
}

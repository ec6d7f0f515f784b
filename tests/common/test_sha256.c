/* tests/common/test_sha256.c — SHA-256 against FIPS 180-2's examples and
 * digests made by coreutils' sha256sum at every padding boundary (55, 56,
 * 63, 64, 65, 119, 120 bytes: one or two final blocks), and the
 * constant-time comparison's answer for a difference at every position. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sha256.h"
#include "tests/support/check_main.h"

static void hex_of(const void *data, size_t len, char out[2 * KVD_SHA256_BYTES + 1])
{
    uint8_t d[KVD_SHA256_BYTES];
    kvd_sha256(data, len, d);
    for (int i = 0; i < KVD_SHA256_BYTES; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void expect_digest(const void *data, size_t len, const char *want)
{
    char got[2 * KVD_SHA256_BYTES + 1];
    hex_of(data, len, got);
    ck_assert_msg(strcmp(got, want) == 0, "sha256 of %zu bytes: %s, want %s", len, got, want);
}

START_TEST(fips_examples)
{
    expect_digest(NULL, 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect_digest("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    expect_digest(two, strlen(two), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *million = malloc(1000000);
    ck_assert_ptr_nonnull(million);
    memset(million, 'a', 1000000);
    expect_digest(million, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}
END_TEST

START_TEST(padding_boundaries)
{
    static const struct { size_t n; const char *hex; } cases[] = {
        {55, "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072"},
        {56, "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e"},
        {63, "75220b47218278e656f2013bb8f0c455a25eaf01e86c64924e9d48d89776d6f2"},
        {64, "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c"},
        {65, "9537c5fdf120482f7d58d25e9ed583f52c02b4e304ea814db1633ad565aed7e9"},
        {119, "000b48d4edf0fa7bee3c6236ecd2785baa5db4eeb8bb54341b029e0d9fa5fb0c"},
        {120, "13f05a0b594787f5ecd315edc96141bd3243203d1b7d4f0836f37308b276ba98"},
    };
    char x[128];
    memset(x, 'x', sizeof x);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_digest(x, cases[i].n, cases[i].hex);
}
END_TEST

START_TEST(ct_memeq_every_position)
{
    uint8_t a[KVD_SHA256_BYTES], b[KVD_SHA256_BYTES];
    for (int i = 0; i < KVD_SHA256_BYTES; i++)
        a[i] = b[i] = (uint8_t)(i * 37 + 11);
    ck_assert(kvd_ct_memeq(a, b, sizeof a));
    ck_assert(kvd_ct_memeq(a, b, 0));
    for (int i = 0; i < KVD_SHA256_BYTES; i++)
        for (int bit = 0; bit < 8; bit++) {
            b[i] ^= (uint8_t)(1u << bit); /* any one bit, any one byte */
            ck_assert_msg(!kvd_ct_memeq(a, b, sizeof a), "byte %d bit %d differs", i, bit);
            ck_assert_msg(kvd_ct_memeq(a, b, (size_t)i), "only the first %d bytes compared", i);
            b[i] ^= (uint8_t)(1u << bit);
        }
    memset(b, 0xff, sizeof b); /* every byte differs: same answer, no overflow of diff */
    ck_assert(!kvd_ct_memeq(a, b, sizeof a));
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("sha256");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, fips_examples);
    tcase_add_test(tc, padding_boundaries);
    tcase_add_test(tc, ct_memeq_every_position);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)

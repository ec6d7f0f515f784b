/* tests/support/api_asserts.h — what the api/ unit tests share: an assertion
 * on a kvd_api_error (status, code, field and a substring of the message)
 * and parsing a test's own JSON text (which must be valid). Header-only. */
#ifndef KVD_TEST_API_ASSERTS_H
#define KVD_TEST_API_ASSERTS_H

#include <string.h>

#include <check.h>
#include <cJSON.h>

#include "api/errors.h"

/* err has status st (400 means invalid_argument, anything else internal),
 * names field fld and says sub somewhere in its message. */
#define ASSERT_ERR(err, st, fld, sub)                                                      \
    do {                                                                                   \
        ck_assert_int_eq((err).status, (st));                                              \
        ck_assert_str_eq((err).code, (st) == 400 ? KVD_ERR_INVALID : KVD_ERR_INTERNAL);    \
        ck_assert_str_eq((err).field, (fld));                                              \
        ck_assert_msg(strstr((err).message, (sub)) != NULL, "message \"%s\" lacks \"%s\"", \
                      (err).message, (sub));                                               \
    } while (0)

/* The test's own JSON text, parsed (a parse failure is a broken test). */
static inline cJSON *parse(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    ck_assert_msg(j != NULL, "bad test JSON: %s", text);
    return j;
}

#endif

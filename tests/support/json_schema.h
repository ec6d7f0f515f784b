/* tests/support/json_schema.h — a minimal JSON Schema validator over cJSON for
 * the subset api/openapi.yaml uses: type (a name or a list of names: object,
 * array, string, number, integer, boolean, null), enum (of scalars), required,
 * properties, additionalProperties (false or a schema), items (one schema),
 * $ref (local, "#/a/b"), allOf and oneOf (exactly one). Annotations that do
 * not constrain here (description, default, minimum, maximum, pattern,
 * minItems, maxItems, title, format, example) are skipped; any other keyword
 * is an error, so the spec cannot lean on one this validator ignores. */
#ifndef KVD_TEST_JSON_SCHEMA_H
#define KVD_TEST_JSON_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

/* Validates instance against schema; root is the document $refs point into.
 * Returns true, or false with why ("$.config.cache.dtype: ..."). */
bool json_schema_validate(const cJSON *root, const cJSON *schema, const cJSON *instance,
                          char *why, size_t why_len);

/* The node a local reference ("#/components/schemas/X") names, or NULL. */
const cJSON *json_schema_resolve(const cJSON *root, const char *ref);

#endif

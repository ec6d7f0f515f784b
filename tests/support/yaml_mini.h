/* tests/support/yaml_mini.h — reads the YAML subset api/openapi.yaml is written
 * in into a cJSON tree, so C tests can check the spec without a YAML library:
 * block mappings and sequences (indented with spaces; "- key: value" items),
 * comments, flow sequences of scalars ([a, 'b', 3]), the empty mapping {},
 * single- and double-quoted scalars, and plain scalars (null, true, false,
 * numbers, strings). Anything else (anchors, tags, block scalars, multi-line
 * flow, duplicate keys, tabs) is an error naming the line. */
#ifndef KVD_TEST_YAML_MINI_H
#define KVD_TEST_YAML_MINI_H

#include <stddef.h>

#include <cJSON.h>

/* Parses text; returns the tree (caller cJSON_Deletes) or NULL with why. */
cJSON *yaml_mini_parse(const char *text, char *why, size_t why_len);

/* Reads and parses a file; NULL with why on failure. */
cJSON *yaml_mini_load(const char *path, char *why, size_t why_len);

/* The repository root, from a test source's __FILE__ (".../tests/<dir>/x.c"):
 * writes it to buf and returns buf. */
char *kvd_test_source_root(const char *file, char *buf, size_t len);

#endif

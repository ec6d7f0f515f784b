/* scripts/check_includes.c — the layer check `make test` runs (ctest check_layers):
 * reads every #include of common/ attention/ cache/ api/ server/ under ROOT and fails on
 * an include that points up a layer, a quoted include outside the layers, a third-party
 * header a layer must not depend on, or a cycle between units (dir/name.c and dir/name.h
 * are one unit dir/name). Prints every violation as file:line; exit 0 clean, 1 not, 2 error. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Lowest first: a layer may include its own and every layer before it. */
static const char *const layers[] = {"common", "attention", "cache", "api", "server"};
#define N_LAYERS (sizeof layers / sizeof layers[0])
#define LAYER_CHAIN "common <- attention <- cache <- api <- server"

/* Third-party headers a layer must not include (<...> or "..."; matched on the last
 * path component, so <cjson/cJSON.h> counts as cJSON.h). */
static const struct {
    const char *layer, *header, *reason;
} forbidden[] = {
    {"common", "cJSON.h", "the leaf knows no JSON"},
    {"common", "uv.h", "the leaf knows no event loop"},
    {"common", "llhttp.h", "the leaf knows no HTTP"},
    {"attention", "cJSON.h", "kernels know no JSON"},
    {"attention", "uv.h", "kernels know no event loop"},
    {"attention", "llhttp.h", "kernels know no HTTP"},
    {"cache", "cJSON.h", "the cache knows no JSON"},
    {"cache", "uv.h", "the cache knows no event loop"},
    {"cache", "llhttp.h", "the cache knows no HTTP"},
    {"api", "uv.h", "the API is driven by server/, it owns no event loop"},
    {"api", "llhttp.h", "the API sees parsed requests, never HTTP bytes"},
};

/* The exceptions, all of them: an include of `header` (as written between the quotes or
 * brackets) in `file` is not checked and is no edge of the unit graph. Every entry says
 * why; an entry that matches nothing is reported (stale). Empty: keep it so. */
static const struct {
    const char *file, *header, *reason;
} allowed[] = {
    {NULL, NULL, NULL} /* end */
};

typedef struct {
    char *file;   /* includer, relative to ROOT */
    int line;
    char *target; /* as written */
} site;

typedef struct {
    int from, to; /* unit indexes */
    site *sites;
    size_t n_sites;
} edge;

static char **units;
static size_t n_units;
static edge *edges;
static size_t n_edges;
static int violations;
static bool *allow_used;

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        fprintf(stderr, "check_includes: out of memory\n");
        exit(2);
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

/* Layer index of a path relative to ROOT (its first component), or -1. */
static int layer_of(const char *rel)
{
    for (size_t i = 0; i < N_LAYERS; i++) {
        size_t n = strlen(layers[i]);
        if (strncmp(rel, layers[i], n) == 0 && rel[n] == '/')
            return (int)i;
    }
    return -1;
}

/* "dir/name.h" -> "dir/name" (the unit); other names stay whole. */
static char *unit_of(const char *rel)
{
    char *u = xstrdup(rel);
    size_t n = strlen(u);
    if (n > 2 && u[n - 2] == '.' && (u[n - 1] == 'c' || u[n - 1] == 'h'))
        u[n - 2] = '\0';
    return u;
}

static int unit_index(const char *rel)
{
    char *u = unit_of(rel);
    for (size_t i = 0; i < n_units; i++)
        if (strcmp(units[i], u) == 0) {
            free(u);
            return (int)i;
        }
    units = xrealloc(units, (n_units + 1) * sizeof *units);
    units[n_units] = u;
    return (int)n_units++;
}

static void add_edge(int from, int to, const char *file, int line, const char *target)
{
    if (from == to)
        return; /* a file including its own header */
    size_t e = 0;
    while (e < n_edges && !(edges[e].from == from && edges[e].to == to))
        e++;
    if (e == n_edges) {
        edges = xrealloc(edges, (n_edges + 1) * sizeof *edges);
        edges[n_edges++] = (edge){from, to, NULL, 0};
    }
    edge *ed = &edges[e];
    ed->sites = xrealloc(ed->sites, (ed->n_sites + 1) * sizeof *ed->sites);
    ed->sites[ed->n_sites++] = (site){xstrdup(file), line, xstrdup(target)};
}

/* Collapses "." and ".." in a relative path, in place; false when it climbs out. */
static bool normalize(char *p)
{
    char *parts[256];
    size_t n = 0;
    for (char *tok = strtok(p, "/"); tok; tok = strtok(NULL, "/")) {
        if (strcmp(tok, ".") == 0)
            continue;
        if (strcmp(tok, "..") == 0) {
            if (n == 0)
                return false;
            n--;
            continue;
        }
        if (n == 256)
            return false;
        parts[n++] = tok;
    }
    char buf[4096] = "";
    for (size_t i = 0; i < n; i++) {
        if (strlen(buf) + strlen(parts[i]) + 2 > sizeof buf)
            return false;
        if (i)
            strcat(buf, "/");
        strcat(buf, parts[i]);
    }
    strcpy(p, buf);
    return true;
}

/* out = a/b; a path that does not fit is an error, never a silently shorter path. */
static void join(char *out, size_t size, const char *a, const char *b)
{
    int n = snprintf(out, size, "%s/%s", a, b);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "check_includes: path too long: %s/%s\n", a, b);
        exit(2);
    }
}

static bool exists(const char *root, const char *rel)
{
    char path[4096];
    struct stat st;
    join(path, sizeof path, root, rel);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Where a quoted include lands, relative to ROOT, as the compiler finds it: beside the
 * includer first, then from ROOT (the only -I the modules get). NULL when outside ROOT. */
static char *resolve(const char *root, const char *includer, const char *target)
{
    char dir[4096], beside[4096];
    size_t dir_len = (size_t)(strrchr(includer, '/') - includer); /* includer is in a layer dir */
    memcpy(dir, includer, dir_len);
    dir[dir_len] = '\0';
    join(beside, sizeof beside, dir, target);
    if (normalize(beside) && exists(root, beside))
        return xstrdup(beside);
    char *p = xstrdup(target);
    if (!normalize(p)) {
        free(p);
        return NULL;
    }
    return p;
}

static const char *basename_of(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static bool is_allowed(const char *file, const char *target)
{
    for (size_t i = 0; allowed[i].file; i++)
        if (strcmp(allowed[i].file, file) == 0 && strcmp(allowed[i].header, target) == 0) {
            allow_used[i] = true;
            return true;
        }
    return false;
}

/* Removes comments from one line, carrying an open block comment to the next; string
 * and character literals are kept (an include's "..." is one). */
static void strip_comments(char *s, bool *in_block)
{
    char *w = s;
    char quote = 0;
    for (char *r = s; *r;) {
        if (*in_block) {
            if (r[0] == '*' && r[1] == '/') {
                *in_block = false;
                r += 2;
                *w++ = ' ';
            } else {
                r++;
            }
        } else if (quote) {
            if (*r == '\\' && r[1]) {
                *w++ = *r++;
            } else if (*r == quote) {
                quote = 0;
            }
            *w++ = *r++;
        } else if (r[0] == '/' && r[1] == '*') {
            *in_block = true;
            r += 2;
        } else if (r[0] == '/' && r[1] == '/') {
            break;
        } else {
            if (*r == '"' || *r == '\'')
                quote = *r;
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* If line is `# include "x"` or `# include <x>`, copies x to out and returns the
 * opening delimiter; else 0. */
static char parse_include(const char *s, char *out, size_t out_size)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s++ != '#')
        return 0;
    while (*s == ' ' || *s == '\t')
        s++;
    if (strncmp(s, "include", 7) != 0)
        return 0;
    s += 7;
    while (*s == ' ' || *s == '\t')
        s++;
    char open = *s, close = open == '<' ? '>' : '"';
    if (open != '<' && open != '"')
        return 0;
    const char *end = strchr(++s, close);
    if (!end || (size_t)(end - s) >= out_size)
        return 0;
    memcpy(out, s, (size_t)(end - s));
    out[end - s] = '\0';
    return open;
}

static void check_file(const char *root, const char *rel)
{
    char path[4096];
    join(path, sizeof path, root, rel);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "check_includes: cannot read %s\n", path);
        exit(2);
    }
    int layer = layer_of(rel), from = unit_index(rel), line_no = 0;
    bool in_block = false;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) != -1) {
        line_no++;
        strip_comments(line, &in_block);
        char target[1024];
        char open = parse_include(line, target, sizeof target);
        if (!open || is_allowed(rel, target))
            continue;
        for (size_t i = 0; i < sizeof forbidden / sizeof forbidden[0]; i++)
            if (strcmp(forbidden[i].layer, layers[layer]) == 0 &&
                strcmp(forbidden[i].header, basename_of(target)) == 0) {
                printf("%s:%d: %s/ must not include %c%s%c: %s\n", rel, line_no,
                       layers[layer], open, target, open == '<' ? '>' : '"',
                       forbidden[i].reason);
                violations++;
            }
        if (open == '<')
            continue;
        char *to = resolve(root, rel, target);
        int to_layer = to ? layer_of(to) : -1;
        if (to_layer < 0) {
            printf("%s:%d: includes \"%s\", which is outside the layers (" LAYER_CHAIN ")\n",
                   rel, line_no, target);
            violations++;
        } else {
            if (to_layer > layer) {
                printf("%s:%d: includes \"%s\": %s/ may not include %s/, a higher layer"
                       " (" LAYER_CHAIN ")\n",
                       rel, line_no, target, layers[layer], layers[to_layer]);
                violations++;
            }
            add_edge(from, unit_index(to), rel, line_no, target);
        }
        free(to);
    }
    free(line);
    fclose(f);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends every .c and .h under ROOT/rel (recursively) to *files. */
static void collect(const char *root, const char *rel, char ***files, size_t *n)
{
    char path[4096];
    join(path, sizeof path, root, rel);
    DIR *d = opendir(path);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char sub[4096], full[8192];
        struct stat st;
        join(sub, sizeof sub, rel, e->d_name);
        join(full, sizeof full, root, sub);
        if (stat(full, &st) != 0)
            continue;
        size_t len = strlen(sub);
        if (S_ISDIR(st.st_mode)) {
            collect(root, sub, files, n);
        } else if (S_ISREG(st.st_mode) && len > 2 && sub[len - 2] == '.' &&
                   (sub[len - 1] == 'c' || sub[len - 1] == 'h')) {
            *files = xrealloc(*files, (*n + 1) * sizeof **files);
            (*files)[(*n)++] = xstrdup(sub);
        }
    }
    closedir(d);
}

/* ---- cycles: Tarjan's strongly connected components, then for every edge inside a
 * component the shortest cycle through it; each distinct cycle is printed once. ---- */

static int *scc, *low, *order, *stack;
static bool *on_stack;
static int counter, sp, n_scc;

static void tarjan(int v)
{
    order[v] = low[v] = ++counter;
    stack[sp++] = v;
    on_stack[v] = true;
    for (size_t e = 0; e < n_edges; e++) {
        if (edges[e].from != v)
            continue;
        int w = edges[e].to;
        if (!order[w]) {
            tarjan(w);
            if (low[w] < low[v])
                low[v] = low[w];
        } else if (on_stack[w] && order[w] < low[v]) {
            low[v] = order[w];
        }
    }
    if (low[v] == order[v]) {
        int w;
        do {
            w = stack[--sp];
            on_stack[w] = false;
            scc[w] = n_scc;
        } while (w != v);
        n_scc++;
    }
}

/* Shortest path src -> dst inside src's component (BFS over edge indexes); writes the
 * edges into path[] and returns their count. */
static size_t shortest(int src, int dst, size_t *path)
{
    int *prev_edge = xrealloc(NULL, n_units * sizeof *prev_edge);
    int *queue = xrealloc(NULL, n_units * sizeof *queue);
    for (size_t i = 0; i < n_units; i++)
        prev_edge[i] = -1;
    size_t head = 0, tail = 0;
    queue[tail++] = src;
    bool found = src == dst;
    while (head < tail && !found) {
        int v = queue[head++];
        for (size_t e = 0; e < n_edges && !found; e++) {
            int w = edges[e].to;
            if (edges[e].from != v || scc[w] != scc[src] || w == src || prev_edge[w] >= 0)
                continue;
            prev_edge[w] = (int)e;
            queue[tail++] = w;
            found = w == dst;
        }
    }
    size_t n = 0;
    for (int v = dst; v != src; v = edges[prev_edge[v]].from)
        path[n++] = (size_t)prev_edge[v];
    for (size_t i = 0; i < n / 2; i++) { /* reverse into src -> dst order */
        size_t t = path[i];
        path[i] = path[n - 1 - i];
        path[n - 1 - i] = t;
    }
    free(prev_edge);
    free(queue);
    return n;
}

static void report_cycles(void)
{
    scc = xrealloc(NULL, n_units * sizeof *scc);
    low = xrealloc(NULL, n_units * sizeof *low);
    order = calloc(n_units ? n_units : 1, sizeof *order);
    stack = xrealloc(NULL, n_units * sizeof *stack);
    on_stack = calloc(n_units ? n_units : 1, sizeof *on_stack);
    if (!order || !on_stack) {
        fprintf(stderr, "check_includes: out of memory\n");
        exit(2);
    }
    for (size_t v = 0; v < n_units; v++)
        if (!order[v])
            tarjan((int)v);

    char **seen = NULL;
    size_t n_seen = 0;
    size_t *cyc = xrealloc(NULL, (n_units + 1) * sizeof *cyc);
    for (size_t e = 0; e < n_edges; e++) {
        if (scc[edges[e].from] != scc[edges[e].to])
            continue;
        cyc[0] = e;
        size_t len = 1 + shortest(edges[e].to, edges[e].from, cyc + 1);
        size_t first = 0; /* rotate to start at the smallest unit name: one text per cycle */
        for (size_t i = 1; i < len; i++)
            if (strcmp(units[edges[cyc[i]].from], units[edges[cyc[first]].from]) < 0)
                first = i;
        char text[8192] = "";
        for (size_t i = 0; i <= len; i++) {
            const char *u = units[i < len ? edges[cyc[(first + i) % len]].from
                                          : edges[cyc[first]].from];
            if (strlen(text) + strlen(u) + 5 < sizeof text) {
                strcat(text, u);
                strcat(text, i < len ? " -> " : "");
            }
        }
        bool dup = false;
        for (size_t i = 0; i < n_seen && !dup; i++)
            dup = strcmp(seen[i], text) == 0;
        if (dup)
            continue;
        seen = xrealloc(seen, (n_seen + 1) * sizeof *seen);
        seen[n_seen++] = xstrdup(text);
        violations++;
        printf("include cycle: %s\n", text);
        for (size_t i = 0; i < len; i++) {
            const edge *ed = &edges[cyc[(first + i) % len]];
            for (size_t s = 0; s < ed->n_sites; s++)
                printf("  %s:%d: includes \"%s\" (%s -> %s)\n", ed->sites[s].file,
                       ed->sites[s].line, ed->sites[s].target, units[ed->from],
                       units[ed->to]);
        }
    }
    for (size_t i = 0; i < n_seen; i++)
        free(seen[i]);
    free(seen);
    free(cyc);
    free(scc);
    free(low);
    free(order);
    free(stack);
    free(on_stack);
}

int main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: check_includes ROOT\n"
                        "  checks the #includes of ROOT/{common,attention,cache,api,server}\n");
        return 2;
    }
    const char *root = argv[1];
    size_t n_allowed = 0;
    while (allowed[n_allowed].file)
        n_allowed++;
    allow_used = calloc(n_allowed + 1, sizeof *allow_used);

    char **files = NULL;
    size_t n_files = 0, n_dirs = 0;
    for (size_t i = 0; i < N_LAYERS; i++) {
        char path[4096];
        struct stat st;
        join(path, sizeof path, root, layers[i]);
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            n_dirs++;
        collect(root, layers[i], &files, &n_files);
    }
    if (n_dirs == 0) { /* a wrong ROOT must not pass as a clean tree */
        fprintf(stderr, "check_includes: no module directory (" LAYER_CHAIN ") under %s\n",
                root);
        return 2;
    }
    qsort(files, n_files, sizeof *files, cmp_str);
    for (size_t i = 0; i < n_files; i++)
        unit_index(files[i]); /* units of existing files first, in name order */
    for (size_t i = 0; i < n_files; i++)
        check_file(root, files[i]);
    report_cycles();

    for (size_t i = 0; i < n_allowed; i++)
        if (!allow_used[i])
            printf("warning: allow-table entry %s -> \"%s\" matches no include: remove it\n",
                   allowed[i].file, allowed[i].header);
    printf("check_includes: %zu files, %zu units, %zu include edges: %d violation%s\n",
           n_files, n_units, n_edges, violations, violations == 1 ? "" : "s");

    /* everything freed, so a leak check (the ASan suite runs this) sees none */
    for (size_t i = 0; i < n_files; i++)
        free(files[i]);
    free(files);
    for (size_t i = 0; i < n_units; i++)
        free(units[i]);
    free(units);
    for (size_t e = 0; e < n_edges; e++) {
        for (size_t s = 0; s < edges[e].n_sites; s++) {
            free(edges[e].sites[s].file);
            free(edges[e].sites[s].target);
        }
        free(edges[e].sites);
    }
    free(edges);
    free(allow_used);
    return violations ? 1 : 0;
}

/* Counts the process's malloc, calloc and realloc calls (LD_PRELOAD), read through tp_malloc_calls():
 * bench/core_allocations.py measures the matching book's allocations through its Python API with it.
 * Python's small objects come from its own arenas and make no calls; Rust's heap storage does.
 * scripts/bootstrap compiles it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

static unsigned long calls;
static void *(*next_malloc)(size_t);
static void *(*next_calloc)(size_t, size_t);
static void *(*next_realloc)(void *, size_t);
/* dlsym may calloc before next_calloc is known: those few bytes come from here, never freed. */
static _Alignas(16) char early[4096];
static size_t early_used;

unsigned long tp_malloc_calls(void) { return __atomic_load_n(&calls, __ATOMIC_RELAXED); }

static void counted(void) { __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED); }

void *malloc(size_t size) {
    if (!next_malloc) next_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    counted();
    return next_malloc(size);
}

void *calloc(size_t count, size_t size) {
    if (!next_calloc) {
        static int resolving;
        if (resolving) {
            void *block = early + early_used;
            early_used += (count * size + 15) & ~(size_t)15;
            return block;
        }
        resolving = 1;
        next_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
        resolving = 0;
    }
    counted();
    return next_calloc(count, size);
}

void *realloc(void *block, size_t size) {
    if (!next_realloc) next_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    counted();
    return next_realloc(block, size);
}

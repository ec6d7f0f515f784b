/* server/state.h — --state-dir (DESIGN.md §7): every session written to
 * DIR/<id>.kvds at shutdown, after the drain, each atomically (a temporary
 * name that the restore glob never matches, fsync, rename, fsync of the
 * directory); on start every DIR/<name>.kvds restored and then deleted. Loop
 * thread only, with no job running. */
#ifndef KVD_SERVER_STATE_H
#define KVD_SERVER_STATE_H

#include <stddef.h>

#include "api/api.h"

#define KVD_STATE_SUFFIX ".kvds"

/* Makes DIR if missing and checks it is a directory we can write. 0, or -1
 * with a message in err. */
int kvd_state_prepare(const char *dir, char *err, size_t err_len);

/* Restores every DIR/<name>.kvds (names starting with '.' are temporary
 * files of an interrupted write: removed, never read). A file that fails its
 * checks is skipped with a log line and left in place; one restored is
 * deleted. Returns the number restored. */
size_t kvd_state_restore(kvd_api *api, const char *dir);

/* Writes every live session; returns how many could not be written (each
 * logged). Test hook: KVD_TEST_STATE_PAUSE_MS=N sleeps N ms in the middle of
 * writing each file (after half its bytes), so a test can kill the process
 * while a temporary file is half-written. */
size_t kvd_state_save(kvd_api *api, const char *dir);

#endif

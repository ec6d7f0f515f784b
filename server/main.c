/* server/main.c — placeholder until the server is wired (being written). */
int main(void) { return 0; }

/* nettest: the node tier's tiny test image (static, no libc beyond what -static links in).
 *
 *   nettest serve PORT TEXT        HTTP/1.0 server on 0.0.0.0:PORT answering every request with TEXT
 *   nettest get IP PORT PATH       GET http://IP:PORT/PATH, print the response; exit 0 on status 200
 *   nettest cat FILE...            print files (e.g. /sys/fs/cgroup/...), then sleep forever
 *   nettest sleep                  sleep forever
 *
 * Built by `make node-tools` (gcc -static) and packaged like the pause image (.ci/node/image.sh).
 */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void forever(void) {
    for (;;) pause();
}

static int serve(int port, const char *text) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 64) < 0) {
        perror("nettest serve");
        return 1;
    }
    printf("nettest serving on :%d\n", port);
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char buf[4096];
        (void)read(c, buf, sizeof buf); /* the request line and headers: one read is enough for a GET */
        char head[256];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %zu\r\n"
                         "Connection: close\r\n\r\n",
                         strlen(text) + 1);
        (void)write(c, head, n);
        (void)write(c, text, strlen(text));
        (void)write(c, "\n", 1);
        close(c);
    }
}

static int get(const char *host, const char *port, const char *path) {
    /* numeric IPv4 only: a static binary must not need glibc's NSS modules at run time */
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "nettest get: not an IPv4 address: %s\n", host);
        return 2;
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("nettest get: connect");
        return 2;
    }
    char req[1024];
    int n = snprintf(req, sizeof req, "GET /%s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n",
                     path[0] == '/' ? path + 1 : path, host, port);
    if (write(s, req, n) != n) {
        perror("nettest get: write");
        return 2;
    }
    static char resp[1 << 16];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof resp - 1 && (r = read(s, resp + got, sizeof resp - 1 - got)) > 0) got += (size_t)r;
    resp[got] = 0;
    fwrite(resp, 1, got, stdout);
    fflush(stdout);
    return strncmp(resp, "HTTP/1.1 200", 12) == 0 || strncmp(resp, "HTTP/1.0 200", 12) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]), argv[3]);
    if (argc == 5 && strcmp(argv[1], "get") == 0) return get(argv[2], argv[3], argv[4]);
    if (argc >= 2 && strcmp(argv[1], "cat") == 0) {
        for (int i = 2; i < argc; i++) {
            FILE *f = fopen(argv[i], "r");
            char line[4096];
            if (f == NULL) {
                perror(argv[i]);
                continue;
            }
            while (fgets(line, sizeof line, f)) printf("%s: %s", argv[i], line);
            fclose(f);
        }
        forever();
    }
    if (argc == 2 && strcmp(argv[1], "sleep") == 0) forever();
    fprintf(stderr, "usage: nettest serve PORT TEXT | get HOST PORT PATH | cat FILE... | sleep\n");
    return 64;
}

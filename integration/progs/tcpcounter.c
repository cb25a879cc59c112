/* tcpcounter PORT: accepts one TCP connection at a time; for every line
 * received it answers with the number of lines received so far on that
 * connection. The count lives in the process's memory: a client that sees
 * N+1 after N kept the same connection and the same process state.
 * Built static (integration/helpers.py) for the busybox rootfs. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 5000;
	int one = 1;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_ANY);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 4)) {
		perror("listen");
		return 1;
	}
	for (;;) {
		int c = accept(l, NULL, NULL);
		unsigned long n = 0;
		char buf[512];
		ssize_t r;
		if (c < 0)
			continue;
		while ((r = read(c, buf, sizeof(buf))) > 0) {
			for (ssize_t i = 0; i < r; i++) {
				if (buf[i] == '\n') {
					char out[32];
					int len = snprintf(out, sizeof(out), "%lu\n", ++n);
					if (write(c, out, len) != len)
						break;
				}
			}
		}
		close(c);
	}
}

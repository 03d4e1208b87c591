/*
 * pause: PID 1 of every pod sandbox in the e2e cluster test, built by
 * e2e/cluster/images.sh into the local registry.k8s.io/pause image (there is
 * no registry to pull the real one from). It behaves like Kubernetes' own
 * pause: it sleeps until SIGINT or SIGTERM, then exits 0, and reaps the
 * zombies it inherits when the pod shares one PID namespace.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_chld(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(void)
{
	struct sigaction sa = { 0 };

	if (getpid() != 1)
		(void)write(2, "pause: warning: not PID 1\n", 26);
	sa.sa_handler = on_term;
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
		return 1;
	sa.sa_handler = on_chld;
	sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	if (sigaction(SIGCHLD, &sa, NULL) < 0)
		return 2;
	for (;;)
		pause();
}

/* Baseline for ./scripts/bench: the smallest possible PID1. It prints the status lines
 * `cvm run` waits for and powers off at once, so (our boot time / this boot time)
 * is the cost of our user space on the same kernel and firmware. */
#include <stdio.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    printf("cvm-agent: ready trivial-init\n");
    printf("cvm-init: poweroff: ok (trivial init)\n");
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    for (;;)
        pause();
}

// SPDX-License-Identifier: GPL-2.0
/* The appliance's BPF LSM programs. Each hook decides for the process that acts:
 *
 *  - a process in a workload's cgroup (v2 id in `workloads`) is held to that
 *    workload's rules, in that workload's mode: `enforce` denies and reports, `audit`
 *    allows and reports;
 *  - any other process is held to the appliance-wide baseline, always enforced.
 *
 * Every decision that is not a plain allow becomes one event on the `events` ring
 * buffer, which the agent turns into log lines, metrics and event-log records.
 * The rules live in maps the agent fills (the object carries no policy). */
#include "kernel.h"

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define __always_inline inline __attribute__((always_inline))

#define EPERM 1
#define AF_INET 2
#define AF_INET6 10
#define FMODE_READ 0x1
#define FMODE_WRITE 0x2
#define PTRACE_MODE_ATTACH 0x02

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_F_NO_PREALLOC 1

/* Helpers by number (include/uapi/linux/bpf.h): no libbpf headers needed. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static long (*bpf_d_path)(struct path *path, char *buf, __u32 sz) = (void *)147;

char LICENSE[] SEC("license") = "GPL";

/* Hook numbers, shared with agent/src/enforce/event.rs. */
enum hook {
	HOOK_FILE_OPEN = 1,
	HOOK_EXEC = 2,
	HOOK_CONNECT = 3,
	HOOK_BIND = 4,
	HOOK_PTRACE = 5,
	HOOK_KILL = 6,
	HOOK_MODULE_REQUEST = 7,
	HOOK_READ_FILE = 8,
	HOOK_BPF = 9,
	HOOK_MOUNT = 10,
	HOOK_LOAD_DATA = 11,
};

enum mode {
	MODE_ENFORCE = 1,
	MODE_AUDIT = 2,
};

/* One workload's scope. */
struct workload {
	__u32 mode;
	__u32 id;
};

/* Appliance-wide settings (one entry). */
struct config {
	__u64 agent_cgroup;
};

#define PATH_BYTES 244
/* LPM key: prefix length in bits over (cgroup id, path). Cgroup 0 holds the
 * baseline's rules, which apply to every process. */
struct file_key {
	__u32 prefixlen;
	__u32 cgroup_lo;
	__u32 cgroup_hi;
	char path[PATH_BYTES];
};
#define FILE_READ 1
#define FILE_WRITE 2
#define FILE_DENY 4

struct net_key {
	__u64 cgroup;
	__u16 op; /* HOOK_CONNECT or HOOK_BIND */
	__u16 family;
	__u16 port; /* network order */
	__u16 pad;
	__u32 addr; /* IPv4, network order; 0 = any address (and every IPv6 address) */
	__u32 pad2;
};

struct exec_key {
	__u64 cgroup;
	__u32 dev;
	__u32 pad;
	__u64 ino;
};

#define DETAIL_BYTES 160
struct event {
	__u64 cgroup;
	__u32 pid;
	__u32 hook;
	__s32 verdict; /* 0: allowed (audit); otherwise the error returned */
	__u32 mode;    /* 0: baseline */
	__u64 arg0;    /* hook-specific: inode, address, port, target pid, signal, cmd */
	__u64 arg1;
	char detail[DETAIL_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct workload);
} workloads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct file_key);
	__type(value, __u32);
} file_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct net_key);
	__type(value, __u8);
} net_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exec_key);
	__type(value, __u8);
} exec_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct file_key);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline __u64 task_cgroup(struct task_struct *t)
{
	struct css_set *cs = t->cgroups;
	if (!cs)
		return 0;
	struct cgroup *cg = cs->dfl_cgrp;
	if (!cg)
		return 0;
	struct kernfs_node *kn = cg->kn;
	if (!kn)
		return 0;
	return kn->id;
}

static __always_inline __u64 agent_cgroup(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&config, &zero);
	return c ? c->agent_cgroup : 0;
}

static __always_inline int is_pid1(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == 1;
}

/* Report one decision; returns the verdict to give the kernel. `w` is the actor's
 * workload, or NULL for the baseline (always enforced). */
static __always_inline int decide(__u64 cg, struct workload *w, __u32 hook, __u64 arg0,
				  __u64 arg1, const char *detail)
{
	int verdict = (w && w->mode == MODE_AUDIT) ? 0 : -EPERM;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (e) {
		e->cgroup = cg;
		e->pid = bpf_get_current_pid_tgid() >> 32;
		e->hook = hook;
		e->verdict = verdict;
		e->mode = w ? w->mode : 0;
		e->arg0 = arg0;
		e->arg1 = arg1;
		e->detail[0] = 0;
		if (detail) {
			/* A bounded copy of a NUL-terminated buffer this program owns. */
			for (int i = 0; i < DETAIL_BYTES - 1; i++) {
				char ch = detail[i];
				e->detail[i] = ch;
				if (!ch)
					break;
				e->detail[i + 1] = 0;
			}
		}
		bpf_ringbuf_submit(e, 0);
	}
	return verdict;
}

/* A hook nobody passes: the actor's workload mode decides, else the baseline. */
static __always_inline int refuse_everyone(__u32 hook, __u64 arg0)
{
	__u64 cg = bpf_get_current_cgroup_id();
	return decide(cg, bpf_map_lookup_elem(&workloads, &cg), hook, arg0, 0, 0);
}

SEC("lsm/file_open")
int file_open(unsigned long long *ctx)
{
	struct file *file = (void *)ctx[0];
	int prev = (int)ctx[1];
	if (prev)
		return prev;
	__u64 cg = bpf_get_current_cgroup_id();
	struct workload *w = bpf_map_lookup_elem(&workloads, &cg);
	__u32 zero = 0;
	struct file_key *k = bpf_map_lookup_elem(&scratch, &zero);
	if (!k)
		return w ? -EPERM : 0;
	long n = bpf_d_path(&file->f_path, k->path, sizeof(k->path));
	if (n <= 0 || n > PATH_BYTES) {
		/* A path that cannot be named (too long, or not in this mount namespace)
		 * cannot match an allow rule. */
		if (w)
			return decide(cg, w, HOOK_FILE_OPEN, 0, 0, "(unnamed path)");
		return 0;
	}
	__u32 mode = file->f_mode;
	__u32 need = ((mode & FMODE_READ) ? FILE_READ : 0) | ((mode & FMODE_WRITE) ? FILE_WRITE : 0);
	/* The baseline's denials hold for everyone, workloads included. */
	k->prefixlen = (8 + (n - 1)) * 8;
	k->cgroup_lo = 0;
	k->cgroup_hi = 0;
	__u32 *base = bpf_map_lookup_elem(&file_rules, k);
	if (base && (*base & FILE_DENY) && !is_pid1())
		return decide(cg, w, HOOK_FILE_OPEN, need, 0, k->path);
	if (!w)
		return 0;
	k->prefixlen = (8 + (n - 1)) * 8;
	k->cgroup_lo = (__u32)cg;
	k->cgroup_hi = (__u32)(cg >> 32);
	__u32 *rule = bpf_map_lookup_elem(&file_rules, k);
	if (rule && !(*rule & FILE_DENY) && (*rule & need) == need)
		return 0;
	return decide(cg, w, HOOK_FILE_OPEN, need, 0, k->path);
}

SEC("lsm/bprm_check_security")
int bprm_check_security(unsigned long long *ctx)
{
	struct linux_binprm *bprm = (void *)ctx[0];
	int prev = (int)ctx[1];
	if (prev)
		return prev;
	__u64 cg = bpf_get_current_cgroup_id();
	struct workload *w = bpf_map_lookup_elem(&workloads, &cg);
	struct inode *inode = bprm->file->f_inode;
	struct exec_key key = {};
	key.cgroup = w ? cg : 0;
	key.dev = inode->i_sb->s_dev;
	key.ino = inode->i_ino;
	if (bpf_map_lookup_elem(&exec_allow, &key))
		return 0;
	return decide(cg, w, HOOK_EXEC, key.ino, key.dev, 0);
}

static __always_inline int net_check(unsigned long long *ctx, __u16 op)
{
	struct sockaddr *addr = (void *)ctx[1];
	int prev = (int)ctx[3];
	if (prev)
		return prev;
	__u64 cg = bpf_get_current_cgroup_id();
	struct workload *w = bpf_map_lookup_elem(&workloads, &cg);
	if (!w)
		return 0;
	__u16 family = addr->sa_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct sockaddr_in *in = (void *)addr;
	struct net_key key = {};
	key.cgroup = cg;
	key.op = op;
	key.family = family;
	key.port = in->sin_port;
	/* IPv6 addresses lie past the 16 bytes of struct sockaddr, which is all a typed
	 * pointer may read: IPv6 is matched by port here, by address in the runtime. */
	key.addr = family == AF_INET ? in->sin_addr.s_addr : 0;
	if (bpf_map_lookup_elem(&net_rules, &key))
		return 0;
	key.addr = 0;
	if (bpf_map_lookup_elem(&net_rules, &key))
		return 0;
	__u64 port = ((in->sin_port & 0xff) << 8) | (in->sin_port >> 8);
	__u64 a = family == AF_INET ? in->sin_addr.s_addr : 0;
	return decide(cg, w, op, a, port | ((__u64)family << 32), 0);
}

SEC("lsm/socket_connect")
int socket_connect(unsigned long long *ctx)
{
	return net_check(ctx, HOOK_CONNECT);
}

SEC("lsm/socket_bind")
int socket_bind(unsigned long long *ctx)
{
	return net_check(ctx, HOOK_BIND);
}

/* Nobody attaches to PID1, the agent or a workload; a workload inspects no one. */
SEC("lsm/ptrace_access_check")
int ptrace_access_check(unsigned long long *ctx)
{
	struct task_struct *child = (void *)ctx[0];
	unsigned int mode = (unsigned int)ctx[1];
	int prev = (int)ctx[2];
	if (prev)
		return prev;
	__u64 cg = bpf_get_current_cgroup_id();
	struct workload *w = bpf_map_lookup_elem(&workloads, &cg);
	int tgid = child->tgid;
	if (w)
		return decide(cg, w, HOOK_PTRACE, tgid, mode, 0);
	if (!(mode & PTRACE_MODE_ATTACH))
		return 0;
	__u64 target = task_cgroup(child);
	if (tgid == 1 || target == agent_cgroup() || bpf_map_lookup_elem(&workloads, &target))
		return decide(cg, 0, HOOK_PTRACE, tgid, mode, 0);
	return 0;
}

/* No signals across a workload's boundary. */
SEC("lsm/task_kill")
int task_kill(unsigned long long *ctx)
{
	struct task_struct *p = (void *)ctx[0];
	int sig = (int)ctx[2];
	int prev = (int)ctx[4];
	if (prev)
		return prev;
	__u64 cg = bpf_get_current_cgroup_id();
	struct workload *w = bpf_map_lookup_elem(&workloads, &cg);
	if (!w)
		return 0;
	if (task_cgroup(p) == cg)
		return 0;
	return decide(cg, w, HOOK_KILL, p->tgid, sig, 0);
}

SEC("lsm/kernel_module_request")
int kernel_module_request(unsigned long long *ctx)
{
	int prev = (int)ctx[1];
	if (prev)
		return prev;
	return refuse_everyone(HOOK_MODULE_REQUEST, 0);
}

SEC("lsm/kernel_read_file")
int kernel_read_file(unsigned long long *ctx)
{
	int id = (int)ctx[1];
	int prev = (int)ctx[3];
	if (prev)
		return prev;
	return refuse_everyone(HOOK_READ_FILE, id);
}

SEC("lsm/kernel_load_data")
int kernel_load_data(unsigned long long *ctx)
{
	int id = (int)ctx[0];
	int prev = (int)ctx[2];
	if (prev)
		return prev;
	return refuse_everyone(HOOK_LOAD_DATA, id);
}

/* Only PID1 and the agent (its cgroup) use bpf(): the enforcer protects itself. */
SEC("lsm/bpf")
int bpf(unsigned long long *ctx)
{
	int cmd = (int)ctx[0];
	int prev = (int)ctx[3];
	if (prev)
		return prev;
	__u64 cg = bpf_get_current_cgroup_id();
	if (is_pid1() || (cg && cg == agent_cgroup()))
		return 0;
	return decide(cg, bpf_map_lookup_elem(&workloads, &cg), HOOK_BPF, cmd, 0, 0);
}

/* No mounts once the appliance is up (PID1 alone, for its power-off sequence). */
SEC("lsm/sb_mount")
int sb_mount(unsigned long long *ctx)
{
	unsigned long flags = (unsigned long)ctx[3];
	int prev = (int)ctx[5];
	if (prev)
		return prev;
	if (is_pid1())
		return 0;
	return refuse_everyone(HOOK_MOUNT, flags);
}

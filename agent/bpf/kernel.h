/* The few kernel types the LSM programs read, declared by hand instead of a 2.8 MB
 * vmlinux.h. Every struct is marked preserve_access_index, so clang emits CO-RE
 * relocations and the loader (aya) fixes each field offset against the running
 * kernel's BTF: the object is built once and loads on any kernel with BTF. Only the
 * fields used are listed; their order here does not matter.
 *
 * Reads go through typed BTF pointers only: the probe-read helpers are gone under
 * lockdown=confidentiality, which the appliance boots with. */
#ifndef CVM_KERNEL_H
#define CVM_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct super_block {
	__u32 s_dev;
};

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
};

struct vfsmount;
struct dentry;

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
	unsigned int f_mode;
};

struct linux_binprm {
	struct file *file;
};

struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct css_set {
	struct cgroup *dfl_cgrp;
};

struct task_struct {
	int tgid;
	struct css_set *cgroups;
};

struct sockaddr {
	__u16 sa_family;
	char sa_data[14];
};

struct in_addr {
	__be32 s_addr;
};

struct sockaddr_in {
	__u16 sin_family;
	__be16 sin_port;
	struct in_addr sin_addr;
};

struct socket;
struct kernel_siginfo;
struct cred;
union bpf_attr;

#pragma clang attribute pop

#endif

// The sim scheduler: blocks over OS threads, CUDA threads as fibers. See shim.h for the model.
#include "shim.h"

#include <link.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// A buffer argument of a launch, as sim.rs passes it (checks only).
struct SerSimBuf {
    unsigned char* base;                 // the whole buffer
    unsigned long long bytes;
    unsigned char* view;                 // the argument's view of it
    unsigned long long view_bytes;
    unsigned long long* shadow;          // one word per 4 bytes of the buffer, or null
    const char* name;                    // parameter name (not NUL-terminated)
    unsigned long long name_len;
};

namespace ser_sim {
thread_local Builtins t_builtins;

namespace {
constexpr size_t kStack = 64 * 1024;
constexpr size_t kGuard = 4096;

// Stacks are pooled process-wide (mmap'd with a guard page below each, so an overflow faults
// instead of corrupting a neighbour).
std::mutex g_pool_mu;
std::vector<void*> g_pool;

void* stack_get() {
    {
        std::lock_guard<std::mutex> g(g_pool_mu);
        if (!g_pool.empty()) {
            void* s = g_pool.back();
            g_pool.pop_back();
            return s;
        }
    }
    void* p = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, kGuard, PROT_NONE);
    return static_cast<char*>(p) + kGuard;
}
void stack_put(void* s) {
    std::lock_guard<std::mutex> g(g_pool_mu);
    g_pool.push_back(s);
}

// Context switch. On x86-64 a hand-written switch (callee-saved registers, MXCSR and the x87
// control word: what the SysV ABI requires a callee to preserve), ~50x cheaper than
// swapcontext, which makes a sigprocmask system call per switch. Elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void ser_sim_ctx_switch(void** save_sp, void* new_sp);
asm(R"(
    .text
    .globl ser_sim_ctx_switch
    .type ser_sim_ctx_switch,@function
ser_sim_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ser_sim_ctx_switch,.-ser_sim_ctx_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
struct Ctx {
    void* sp = nullptr;
};
inline void ctx_switch(Ctx& from, Ctx& to) { ser_sim_ctx_switch(&from.sp, to.sp); }
// Lays out a fresh stack so that the first switch to it "returns" into entry() with the stack
// aligned as after a call.
inline void ctx_init(Ctx& c, void* stack, size_t size, void (*entry)()) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
    uint64_t* p = reinterpret_cast<uint64_t*>(top);
    p[-1] = 0;                                       // fake return address of entry (never returns)
    p[-2] = reinterpret_cast<uint64_t>(entry);       // popped by ret
    for (int i = 3; i <= 8; ++i) p[-i] = 0;          // rbp rbx r12 r13 r14 r15
    uint32_t* csr = reinterpret_cast<uint32_t*>(&p[-9]);
    csr[0] = 0x1F80;                                 // MXCSR default
    csr[1] = 0x037F;                                 // x87 control word default
    c.sp = &p[-9];
}
#else
struct Ctx {
    ucontext_t uc;
};
inline void ctx_switch(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
inline void ctx_init(Ctx& c, void* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

enum State { RUNNABLE, AT_BARRIER, AT_WARP, DONE, FAILED };

struct Fiber {
    Ctx ctx;
    void* stack = nullptr;
    State state = RUNNABLE;
    uint3 idx{0, 0, 0};
    // barrier / warp op in flight
    int pred = 0;
    int result_i = 0;
    int wkind = 0;
    unsigned wmask = 0;
    unsigned long long wbits = 0, wresult = 0;
    int warg = 0, wwidth = 32;
};

struct Block {
    std::vector<Fiber> fibers;
    Ctx sched;
    int current = -1;
    Trampoline tramp = nullptr;
    void** args = nullptr;
    std::string error;
};

thread_local Block* t_block = nullptr;

void fiber_entry() {
    Block* b = t_block;
    b->tramp(b->args);
    b = t_block;
    b->fibers[b->current].state = DONE;
    ctx_switch(b->fibers[b->current].ctx, b->sched);  // never resumed
    std::abort();
}

void yield_to_scheduler() {
    Block* b = t_block;
    Fiber& f = b->fibers[b->current];
    ctx_switch(f.ctx, b->sched);
}

unsigned long long splitmix(unsigned long long& s) {
    unsigned long long z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// ---- Checks ----------------------------------------------------------------------------------
// The kernel files are compiled with -fsanitize=thread (build.rs), so each of their loads,
// stores and atomics calls a __tsan_* function (end of this file), which lands in on_access.
// This file itself is not instrumented. An access is classified by address: the current
// fiber's stack (ignored), the block's dynamic shared memory, static __shared__ variables
// (thread-local storage of the executable, minus the built-in variables), or a buffer argument
// of the launch (global memory); anything else (constant tables) is ignored.
//
// racecheck, per 4-byte word: within a barrier interval (between two __syncthreads of the
// block), two different threads touching the word, at least one with a plain (non-atomic)
// write, is a race unless both are lanes of one warp and a warp collective (__syncwarp,
// shuffles, ballots) of that warp came in between. Shared memory has a shadow word per word;
// global memory within a block uses a direct-mapped table of recent words (older entries are
// evicted, so a conflicting pair far apart in one interval can be missed). Across blocks, the
// buffer's shadow word (sim.rs) holds the launch, block and thread of the last plain write: a
// plain write of a word another block wrote in the same launch is a write-write race.
// initcheck: the same shadow word has a bit set while the word is unwritten since
// `alloc_uninit`; a kernel read (plain or atomic) of such a word is an error.

constexpr uint16_t kNone = 0xFFFF;
constexpr unsigned long long kUnwritten = 1ull << 63;
constexpr unsigned kUntrackedBlock = 0x3FFFFF;  // 22 bits of block index in a stamp

// What one word saw in the current barrier interval. Readers: the last one (r_last, read in
// warp epoch r_we), another lane of its warp that read in that same epoch (r_same), and a
// reader from a different warp than r_last (r_alt).
struct WordState {
    uint32_t w_iv = 0, r_iv = 0;
    uint32_t w_we = 0, r_we = 0;
    uint16_t w_tid = kNone, r_last = kNone, r_same = kNone, r_alt = kNone;
    uint8_t w_atomic = 0;
};
struct GlobalSlot {
    uintptr_t word = 0;
    WordState s;
};
constexpr size_t kGlobalSlots = 1 << 14;

struct LaunchCheck {
    const SerSimBuf* bufs;
    int nbufs;
    uint32_t gen;  // launch number, 31 bits, never 0
    bool track_blocks;
};

// Per worker (pooled across launches): the shadow state of the block it runs.
struct Checker {
    const LaunchCheck* launch = nullptr;
    Block* block = nullptr;
    dim3 bdim;
    uint32_t ctr = 0;  // source of interval and epoch ids (unique within this checker)
    uint32_t iv = 0;   // the block's current barrier interval
    std::vector<uint32_t> wep;  // each warp's current epoch (bumped by its collectives)
    uint32_t blk = 0;
    int tid = 0;
    uintptr_t stack_lo = 0;
    uintptr_t dyn_lo = 0, dyn_hi = 0;
    std::vector<WordState> dyn;
    uintptr_t tls_lo = 0, tls_hi = 0, bi_lo = 0, bi_hi = 0;
    std::vector<WordState> tls;
    std::vector<GlobalSlot> global;

    uint32_t next_id() {
        if (ctr > 0xFFFFFF00u) {  // ids would wrap: forget everything, as if fresh
            ctr = 0;
            for (auto& w : dyn) w = WordState{};
            for (auto& w : tls) w = WordState{};
            for (auto& g : global) g = GlobalSlot{};
            iv = ++ctr;
            for (auto& e : wep) e = ++ctr;
        }
        return ++ctr;
    }
};
thread_local Checker* t_ck = nullptr;

std::mutex g_checker_mu;
std::vector<Checker*> g_checkers;
std::atomic<uint32_t> g_launch_gen{0};

// Static TLS of the executable on x86-64 (TLS variant II): the block of module 1 ends at the
// thread pointer. Its size comes from the PT_TLS header; 0 where that does not hold.
uintptr_t tls_span() {
#if defined(__x86_64__)
    static uintptr_t span = [] {
        uintptr_t sz = 0;
        dl_iterate_phdr(
            [](struct dl_phdr_info* info, size_t, void* data) -> int {
                for (int i = 0; i < info->dlpi_phnum; ++i)
                    if (info->dlpi_phdr[i].p_type == PT_TLS) {
                        uintptr_t al = info->dlpi_phdr[i].p_align ? info->dlpi_phdr[i].p_align : 1;
                        *static_cast<uintptr_t*>(data) = (info->dlpi_phdr[i].p_memsz + al - 1) / al * al + al;
                    }
                return 1;  // the first object is the executable
            },
            &sz);
        uintptr_t tp;
        asm("mov %%fs:0, %0" : "=r"(tp));
        uintptr_t me = reinterpret_cast<uintptr_t>(&t_builtins);
        return (me < tp && me >= tp - sz) ? sz : uintptr_t(0);
    }();
    return span;
#else
    return 0;
#endif
}

Checker* checker_get(const LaunchCheck* l, size_t dyn_bytes) {
    Checker* c = nullptr;
    {
        std::lock_guard<std::mutex> g(g_checker_mu);
        if (!g_checkers.empty()) {
            c = g_checkers.back();
            g_checkers.pop_back();
        }
    }
    if (!c) {
        c = new Checker();
        c->global.resize(kGlobalSlots);
    }
    c->launch = l;
    if (c->dyn.size() < dyn_bytes / 4) c->dyn.resize(dyn_bytes / 4);
    uintptr_t span = tls_span();
#if defined(__x86_64__)
    uintptr_t tp;
    asm("mov %%fs:0, %0" : "=r"(tp));
#else
    uintptr_t tp = 0;
#endif
    c->tls_lo = span ? tp - span : 0;
    c->tls_hi = span ? tp : 0;
    if (c->tls.size() < span / 4) c->tls.resize(span / 4);
    c->bi_lo = reinterpret_cast<uintptr_t>(&t_builtins);
    c->bi_hi = c->bi_lo + sizeof(Builtins);
    return c;
}
void checker_put(Checker* c) {
    c->launch = nullptr;
    c->block = nullptr;
    std::lock_guard<std::mutex> g(g_checker_mu);
    g_checkers.push_back(c);
}

std::string thread_name(const dim3& bd, unsigned t) {
    return "(" + std::to_string(t % bd.x) + "," + std::to_string(t / bd.x % bd.y) + "," + std::to_string(t / (bd.x * bd.y)) + ")";
}

[[noreturn]] void fail_check(const std::string& msg) {
    Block* b = t_block;
    b->error = msg;
    b->fibers[b->current].state = FAILED;
    yield_to_scheduler();
    std::abort();  // never resumed
}

// Applies one access by the current thread to a word's state; on a race returns its kind and
// sets `other` to the other thread.
const char* word_access(Checker* c, WordState& s, bool write, bool atomic, unsigned& other) {
    const uint32_t iv = c->iv;
    const unsigned t = (unsigned)c->tid, w = t >> 5;
    const uint32_t we = c->wep[w];
    auto ordered = [&](unsigned p, uint32_t pwe) { return p == t || ((p >> 5) == w && pwe != we); };
    if (!write) {
        if (s.w_iv == iv && !s.w_atomic && !ordered(s.w_tid, s.w_we)) {
            other = s.w_tid;
            return "read-after-write";
        }
        if (s.r_iv != iv) {
            s.r_iv = iv;
            s.r_last = (uint16_t)t;
            s.r_we = we;
            s.r_same = s.r_alt = kNone;
        } else if (s.r_last == t) {
            if (s.r_we != we) { s.r_we = we; s.r_same = kNone; }
        } else if ((unsigned)(s.r_last >> 5) != w) {
            s.r_alt = s.r_last;
            s.r_last = (uint16_t)t;
            s.r_we = we;
            s.r_same = kNone;
        } else {
            s.r_same = s.r_we == we ? s.r_last : kNone;
            s.r_last = (uint16_t)t;
            s.r_we = we;
        }
        return nullptr;
    }
    if (s.w_iv == iv && !(atomic && s.w_atomic) && !ordered(s.w_tid, s.w_we)) {
        other = s.w_tid;
        return "write-write";
    }
    if (!atomic && s.r_iv == iv) {
        if (!ordered(s.r_last, s.r_we)) { other = s.r_last; return "write-after-read"; }
        if (s.r_same != kNone && !ordered(s.r_same, s.r_we)) { other = s.r_same; return "write-after-read"; }
        if (s.r_alt != kNone && s.r_alt != t && (unsigned)(s.r_alt >> 5) != w) { other = s.r_alt; return "write-after-read"; }
    }
    s.w_iv = iv;
    s.w_tid = (uint16_t)t;
    s.w_we = we;
    s.w_atomic = atomic;
    return nullptr;
}

[[noreturn]] void report_race(Checker* c, const char* kind, unsigned other, const std::string& where) {
    bool war = std::strcmp(kind, "write-after-read") == 0, raw = std::strcmp(kind, "read-after-write") == 0;
    fail_check(std::string("racecheck: ") + kind + " race on " + where + ": thread " + thread_name(c->bdim, other) + (war ? " read" : " wrote") +
               " it and thread " + thread_name(c->bdim, (unsigned)c->tid) + (raw ? " read" : " wrote") +
               " it with no barrier (or warp sync) in between");
}

void shared_access(Checker* c, WordState* shadow, uintptr_t off, unsigned size, bool write, bool atomic, const char* what) {
    for (uintptr_t o = off & ~uintptr_t(3); o < off + size; o += 4) {
        unsigned other;
        if (const char* k = word_access(c, shadow[o / 4], write, atomic, other))
            report_race(c, k, other, std::string(what) + " byte offset " + std::to_string(o));
    }
}

// Where a global address lies: the argument whose view holds it (else whose buffer does).
const SerSimBuf* find_buf(const LaunchCheck* l, uintptr_t a) {
    const SerSimBuf* in_buf = nullptr;
    for (int i = 0; i < l->nbufs; ++i) {
        const SerSimBuf& b = l->bufs[i];
        uintptr_t base = reinterpret_cast<uintptr_t>(b.base);
        if (a - base >= b.bytes) continue;
        if (a - reinterpret_cast<uintptr_t>(b.view) < b.view_bytes) return &b;
        if (!in_buf) in_buf = &b;
    }
    return in_buf;
}

std::string buf_where(const SerSimBuf* b, uintptr_t a) {
    uintptr_t base = reinterpret_cast<uintptr_t>(b->base), view = reinterpret_cast<uintptr_t>(b->view);
    std::string s = "buffer '" + std::string(b->name, b->name_len) + "' element " + std::to_string((a - base) / 4);
    if (view != base && a - view < b->view_bytes) s += " (element " + std::to_string((a - view) / 4) + " of the argument's view)";
    return s;
}

void global_access(Checker* c, uintptr_t a, unsigned size, bool write, bool atomic) {
    const LaunchCheck* l = c->launch;
    for (uintptr_t wa = a & ~uintptr_t(3); wa < a + size; wa += 4) {
        const SerSimBuf* b = find_buf(l, wa);
        if (!b) continue;
        if (b->shadow) {
            unsigned long long* sh = &b->shadow[(wa - reinterpret_cast<uintptr_t>(b->base)) / 4];
            if (!write || atomic) {
                if (__atomic_load_n(sh, __ATOMIC_RELAXED) & kUnwritten)
                    fail_check("initcheck: thread " + thread_name(c->bdim, (unsigned)c->tid) + " read " + buf_where(b, wa) +
                               ", which nothing has written since it was allocated");
            }
            if (write && atomic) {
                __atomic_fetch_and(sh, ~kUnwritten, __ATOMIC_RELAXED);
            } else if (write) {
                unsigned blk = l->track_blocks ? c->blk : kUntrackedBlock;
                unsigned long long stamp = (unsigned long long)l->gen << 32 | (unsigned long long)blk << 10 | (unsigned)c->tid;
                unsigned long long old = __atomic_exchange_n(sh, stamp, __ATOMIC_RELAXED);
                unsigned oblk = (unsigned)(old >> 10) & kUntrackedBlock;
                if ((uint32_t)(old >> 32 & 0x7FFFFFFF) == l->gen && blk != kUntrackedBlock && oblk != blk) {
                    const dim3 g = t_builtins.grid_dim;
                    std::string ob = "(" + std::to_string(oblk % g.x) + "," + std::to_string(oblk / g.x % g.y) + "," + std::to_string(oblk / (g.x * g.y)) + ")";
                    fail_check("racecheck: write-write race on global memory, " + buf_where(b, wa) + ": block " + ob + " thread " +
                               thread_name(c->bdim, (unsigned)(old & 1023)) + " and this block's thread " +
                               thread_name(c->bdim, (unsigned)c->tid) + " both wrote it (plain stores) in one launch");
                }
            }
        }
        GlobalSlot& g = c->global[(wa >> 2) * 0x9E3779B1u % kGlobalSlots];
        if (g.word != wa) {
            g.word = wa;
            g.s = WordState{};
        }
        unsigned other;
        if (const char* k = word_access(c, g.s, write, atomic, other)) report_race(c, k, other, "global memory, " + buf_where(b, wa));
    }
}

inline void on_access(const volatile void* p, unsigned size, bool write, bool atomic) {
    Checker* c = t_ck;
    if (!c) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a - c->stack_lo < kStack) return;
    if (a - c->dyn_lo < c->dyn_hi - c->dyn_lo) {
        shared_access(c, c->dyn.data(), a - c->dyn_lo, size, write, atomic, "dynamic shared memory,");
    } else if (a - c->tls_lo < c->tls_hi - c->tls_lo) {
        if (a - c->bi_lo < c->bi_hi - c->bi_lo) return;
        shared_access(c, c->tls.data(), a - c->tls_lo, size, write, atomic, "static __shared__ memory, thread-local");
    } else {
        global_access(c, a, size, write, atomic);
    }
}

const char* warp_name(int k) {
    static const char* n[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync"};
    return (k >= 0 && k <= 5) ? n[k] : "warp op";
}

// Resolves the warp collectives that can complete. Returns false and sets err on misuse.
bool resolve_warps(Block& b, int nthreads, bool& progressed, std::string& err) {
    int nwarps = (nthreads + 31) / 32;
    for (int w = 0; w < nwarps; ++w) {
        int base = w * 32;
        int lanes = std::min(32, nthreads - base);
        // the mask of the first waiting lane decides the group; all its lanes must be waiting
        int first = -1;
        for (int l = 0; l < lanes; ++l)
            if (b.fibers[base + l].state == AT_WARP) { first = l; break; }
        if (first < 0) continue;
        unsigned mask = b.fibers[base + first].wmask;
        int kind = b.fibers[base + first].wkind;
        bool ready = true;
        for (int l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            if (l >= lanes) {
                err = std::string(warp_name(kind)) + " mask names lane " + std::to_string(l) + " of warp " + std::to_string(w) + ", which does not exist (block has " + std::to_string(nthreads) + " threads)";
                return false;
            }
            Fiber& f = b.fibers[base + l];
            if (f.state == DONE) {
                err = std::string(warp_name(kind)) + ": lane " + std::to_string(l) + " of warp " + std::to_string(w) + " is in the mask but returned";
                return false;
            }
            if (f.state != AT_WARP) { ready = false; break; }
            if (f.wmask != mask || f.wkind != kind) {
                err = std::string("warp ") + std::to_string(w) + ": lanes disagree at a warp collective (" + warp_name(kind) + " mask " + std::to_string(mask) + " vs " + warp_name(f.wkind) + " mask " + std::to_string(f.wmask) + ")";
                return false;
            }
        }
        if (!(mask >> first & 1u)) {
            err = std::string(warp_name(kind)) + ": calling lane " + std::to_string(first) + " is not in its own mask";
            return false;
        }
        if (!ready) continue;
        unsigned ballot = 0;
        for (int l = 0; l < 32; ++l)
            if ((mask >> l & 1u) && b.fibers[base + l].wbits) ballot |= 1u << l;
        for (int l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            Fiber& f = b.fibers[base + l];
            int width = f.wwidth;
            if (width <= 0 || width > 32 || (width & (width - 1))) {
                err = std::string(warp_name(kind)) + ": width " + std::to_string(width) + " is not a power of two <= 32";
                return false;
            }
            int seg = l & ~(width - 1), pos = l & (width - 1);
            int src = l;
            switch (kind) {
                case WARP_SHFL: src = seg + (f.warg & (width - 1)); break;
                case WARP_SHFL_UP: src = pos >= f.warg ? l - f.warg : l; break;
                case WARP_SHFL_DOWN: src = pos + f.warg < width ? l + f.warg : l; break;
                case WARP_SHFL_XOR: { int s = l ^ f.warg; src = (s & ~(width - 1)) == seg ? s : l; break; }
                default: break;
            }
            if (kind == WARP_BALLOT) f.wresult = ballot;
            else if (kind == WARP_SYNC) f.wresult = 0;
            else {
                if (!(mask >> src & 1u)) {
                    err = std::string(warp_name(kind)) + ": lane " + std::to_string(l) + " reads lane " + std::to_string(src) + ", which is not in the mask";
                    return false;
                }
                f.wresult = b.fibers[base + src].wbits;
            }
        }
        for (int l = 0; l < 32; ++l)
            if (mask >> l & 1u) b.fibers[base + l].state = RUNNABLE;
        if (t_ck) t_ck->wep[w] = t_ck->next_id();  // orders this warp's accesses before/after
        progressed = true;
    }
    return true;
}

struct Options {
    int shuffle;
    unsigned long long seed;
    int workers;
    const LaunchCheck* check;  // null: checks off
};

// Runs one block to completion on the calling OS thread. Returns an empty string or the error.
std::string run_block(Trampoline tramp, void** args, dim3 grid, dim3 block, uint3 bidx, unsigned char* dyn,
                      size_t dyn_bytes, const Options& opt) {
    int n = (int)(block.x * block.y * block.z);
    Block b;
    b.tramp = tramp;
    b.args = args;
    b.fibers.resize(n);
    t_block = &b;
    t_builtins.block_idx = bidx;
    t_builtins.block_dim = block;
    t_builtins.grid_dim = grid;
    t_builtins.dynamic_shared = dyn;
    if (dyn_bytes) std::memset(dyn, 0xFF, dyn_bytes);
    Checker* ck = nullptr;
    if (opt.check) {
        ck = checker_get(opt.check, dyn_bytes);
        ck->block = &b;
        ck->bdim = block;
        ck->blk = (unsigned)(bidx.x + grid.x * (bidx.y + (unsigned long long)grid.y * bidx.z));
        ck->iv = ck->next_id();
        ck->wep.assign((size_t)(n + 31) / 32, 0);
        for (auto& e : ck->wep) e = ck->next_id();
        ck->dyn_lo = reinterpret_cast<uintptr_t>(dyn);
        ck->dyn_hi = ck->dyn_lo + dyn_bytes / 4 * 4;
        t_ck = ck;
    }
    std::string err;
    for (int i = 0; i < n; ++i) {
        Fiber& f = b.fibers[i];
        f.idx = uint3{(unsigned)(i % block.x), (unsigned)((i / block.x) % block.y), (unsigned)(i / (block.x * block.y))};
        f.stack = stack_get();
        if (!f.stack) { err = "out of memory for fiber stacks"; break; }
        ctx_init(f.ctx, f.stack, kStack, fiber_entry);
    }
    unsigned long long rng = opt.seed ^ (0x632BE59BD9B4E019ull * (1 + bidx.x + 65536ull * (bidx.y + 65536ull * bidx.z)));
    std::vector<int> order(n);
    int live = n;
    while (err.empty() && live > 0) {
        // one round: run every runnable fiber until it blocks or returns
        order.clear();
        for (int i = 0; i < n; ++i)
            if (b.fibers[i].state == RUNNABLE) order.push_back(i);
        if (opt.shuffle)
            for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[splitmix(rng) % i]);
        for (int i : order) {
            b.current = i;
            t_builtins.thread_idx = b.fibers[i].idx;
            if (ck) {
                ck->tid = i;
                ck->stack_lo = reinterpret_cast<uintptr_t>(b.fibers[i].stack);
            }
            ctx_switch(b.sched, b.fibers[i].ctx);
            if (b.fibers[i].state == FAILED) { err = b.error; break; }
        }
        if (!err.empty()) break;
        live = 0;
        int at_barrier = 0, done = 0;
        for (auto& f : b.fibers) {
            if (f.state != DONE) ++live;
            if (f.state == AT_BARRIER) ++at_barrier;
            if (f.state == DONE) ++done;
        }
        if (live == 0) break;
        bool progressed = false;
        if (!resolve_warps(b, n, progressed, err)) break;
        if (progressed) continue;
        if (at_barrier == live) {
            if (done > 0) {
                err = "barrier divergence: " + std::to_string(at_barrier) + " of " + std::to_string(n) + " threads wait at __syncthreads while " + std::to_string(done) + " returned without reaching it";
                break;
            }
            int count = 0;
            for (auto& f : b.fibers) count += f.pred;
            for (auto& f : b.fibers) { f.result_i = count; f.state = RUNNABLE; }
            if (ck) ck->iv = ck->next_id();
            continue;
        }
        // nothing runnable, warps unresolved, not everyone at the barrier: a deadlock
        err = "deadlock: " + std::to_string(at_barrier) + " threads at __syncthreads, " + std::to_string(live - at_barrier) + " at warp collectives that cannot complete";
    }
    for (auto& f : b.fibers)
        if (f.stack) stack_put(f.stack);
    t_block = nullptr;
    if (ck) {
        t_ck = nullptr;
        checker_put(ck);
    }
    if (!err.empty()) {
        char where[96];
        std::snprintf(where, sizeof where, " (block %u,%u,%u)", bidx.x, bidx.y, bidx.z);
        err += where;
    }
    return err;
}
}  // namespace

int sync_block(int pred) {
    Block* b = t_block;
    Fiber& f = b->fibers[b->current];
    f.pred = pred;
    f.state = AT_BARRIER;
    yield_to_scheduler();
    return b->fibers[b->current].result_i;
}

unsigned long long warp_op(int kind, unsigned mask, unsigned long long bits, int arg, int width) {
    Block* b = t_block;
    Fiber& f = b->fibers[b->current];
    f.wkind = kind;
    f.wmask = mask;
    f.wbits = bits;
    f.warg = arg;
    f.wwidth = width;
    f.state = AT_WARP;
    yield_to_scheduler();
    return b->fibers[b->current].wresult;
}

void fail(const char* msg, const char* file, int line) {
    Block* b = t_block;
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s at %s:%d (thread %u,%u,%u)", msg, file, line, t_builtins.thread_idx.x, t_builtins.thread_idx.y, t_builtins.thread_idx.z);
    b->error = buf;
    b->fibers[b->current].state = FAILED;
    yield_to_scheduler();
    std::abort();  // never resumed
}
}  // namespace ser_sim

extern "C" {
extern const ser_sim::KernelEntry ser_sim_kernels[];
extern const int ser_sim_kernel_count;

struct SerSimOptions {
    int shuffle;
    unsigned long long seed;
    int workers;  // 0 = one per core
    int checks;   // racecheck + initcheck (see "Checks")
};

// Whether racecheck sees static __shared__ variables here (x86-64: their thread-local block
// was found); dynamic shared and global memory are checked everywhere.
int ser_sim_static_shared_checked() { return ser_sim::tls_span() != 0; }

// Launches kernel number `index` of the generated table; blocking. Returns 0 or -1 with a
// message in err (naming the kernel).
int ser_sim_launch(int index, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned long long shared_bytes, void** args, const SerSimBuf* bufs, int nbufs, const SerSimOptions* o,
                   char* err, size_t errlen) {
    using namespace ser_sim;
    auto fail_with = [&](const std::string& m) {
        std::snprintf(err, errlen, "%s", m.c_str());
        return -1;
    };
    if (index < 0 || index >= ser_sim_kernel_count) return fail_with("unknown kernel index");
    const KernelEntry& k = ser_sim_kernels[index];
    std::string kname = std::string("kernel '") + k.name + "'";
    if (bx * by * bz == 0 || bx * by * bz > 1024 || bz > 64) return fail_with(kname + ": invalid block size");
    if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return fail_with(kname + ": invalid grid size");
    if (shared_bytes > 227 * 1024) return fail_with(kname + ": dynamic shared memory over 227 KiB");
    unsigned long long nblocks = (unsigned long long)gx * gy * gz;
    uint32_t gen = 0;
    while (gen == 0) gen = (g_launch_gen.fetch_add(1) + 1) & 0x7FFFFFFF;
    LaunchCheck lc{bufs, nbufs, gen, nblocks < kUntrackedBlock};
    Options opt{o->shuffle, o->seed, o->workers, o->checks ? &lc : nullptr};
    unsigned hw = std::thread::hardware_concurrency();
    unsigned long long nw = opt.workers > 0 ? (unsigned)opt.workers : (hw ? hw : 1);
    if (nw > nblocks) nw = nblocks;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> stop{false};
    std::mutex emu;
    std::string first_err;
    auto worker = [&]() {
        std::vector<unsigned char> dyn(shared_bytes + 16);
        unsigned char* dp = dyn.data() + ((16 - ((uintptr_t)dyn.data() & 15)) & 15);
        for (;;) {
            if (stop.load()) return;
            unsigned long long i = next.fetch_add(1);
            if (i >= nblocks) return;
            uint3 bi{(unsigned)(i % gx), (unsigned)((i / gx) % gy), (unsigned)(i / ((unsigned long long)gx * gy))};
            std::string e = run_block(k.tramp, args, dim3(gx, gy, gz), dim3(bx, by, bz), bi, dp, shared_bytes, opt);
            if (!e.empty()) {
                std::lock_guard<std::mutex> g(emu);
                if (first_err.empty()) first_err = e;
                stop.store(true);
                return;
            }
        }
    };
    if (nw <= 1) {
        worker();
    } else {
        std::vector<std::thread> ts;
        for (unsigned long long t = 0; t < nw; ++t) ts.emplace_back(worker);
        for (auto& t : ts) t.join();
    }
    if (!first_err.empty()) return fail_with(kname + ": " + first_err);
    return 0;
}
}

// The ThreadSanitizer ABI that g++ -fsanitize=thread emits calls to (instrumented kernel files
// only). Atomics stay real atomics (blocks run concurrently); memory orders are all seq_cst.
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
#define SER_TSAN_ACCESS(n)                                                                         \
    void __tsan_read##n(void* p) { ser_sim::on_access(p, n, false, false); }                      \
    void __tsan_write##n(void* p) { ser_sim::on_access(p, n, true, false); }                      \
    void __tsan_unaligned_read##n(void* p) { ser_sim::on_access(p, n, false, false); }            \
    void __tsan_unaligned_write##n(void* p) { ser_sim::on_access(p, n, true, false); }
SER_TSAN_ACCESS(1)
SER_TSAN_ACCESS(2)
SER_TSAN_ACCESS(4)
SER_TSAN_ACCESS(8)
SER_TSAN_ACCESS(16)
void __tsan_read_range(void* p, unsigned long n) { ser_sim::on_access(p, (unsigned)n, false, false); }
void __tsan_write_range(void* p, unsigned long n) { ser_sim::on_access(p, (unsigned)n, true, false); }
#define SER_TSAN_ATOMIC(bits, T)                                                                    \
    T __tsan_atomic##bits##_load(const volatile T* a, int) {                                          \
        ser_sim::on_access(a, sizeof(T), false, true);                                               \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                 \
    }                                                                                                \
    void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                                       \
        ser_sim::on_access(a, sizeof(T), true, true);                                                \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                    \
    }                                                                                                \
    T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                                       \
        ser_sim::on_access(a, sizeof(T), false, true);                                               \
        ser_sim::on_access(a, sizeof(T), true, true);                                                \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                          \
    }                                                                                                \
    SER_TSAN_RMW(bits, T, fetch_add) SER_TSAN_RMW(bits, T, fetch_sub) SER_TSAN_RMW(bits, T, fetch_and) \
    SER_TSAN_RMW(bits, T, fetch_or) SER_TSAN_RMW(bits, T, fetch_xor)                                 \
    int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {           \
        ser_sim::on_access(a, sizeof(T), false, true);                                               \
        ser_sim::on_access(a, sizeof(T), true, true);                                                \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);      \
    }                                                                                                \
    int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {             \
        ser_sim::on_access(a, sizeof(T), false, true);                                               \
        ser_sim::on_access(a, sizeof(T), true, true);                                                \
        return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
    }                                                                                                \
    T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                 \
        ser_sim::on_access(a, sizeof(T), false, true);                                               \
        ser_sim::on_access(a, sizeof(T), true, true);                                                \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);            \
        return c;                                                                                    \
    }
#define SER_TSAN_RMW(bits, T, op)                                                                   \
    T __tsan_atomic##bits##_##op(volatile T* a, T v, int) {                                           \
        ser_sim::on_access(a, sizeof(T), false, true);                                               \
        ser_sim::on_access(a, sizeof(T), true, true);                                                \
        return __atomic_##op(a, v, __ATOMIC_SEQ_CST);                                                \
    }
SER_TSAN_ATOMIC(32, int)
SER_TSAN_ATOMIC(64, long long)
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}
}

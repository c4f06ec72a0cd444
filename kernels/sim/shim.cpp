// The sim scheduler: blocks over OS threads, CUDA threads as fibers. See shim.h for the model.
#include "shim.h"

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

namespace ser_sim {
thread_local uint3 t_threadIdx;
thread_local uint3 t_blockIdx;
thread_local dim3 t_blockDim;
thread_local dim3 t_gridDim;
thread_local unsigned char* t_dynamic_shared;

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
        progressed = true;
    }
    return true;
}

struct Options {
    int shuffle;
    unsigned long long seed;
    int workers;
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
    t_blockIdx = bidx;
    t_blockDim = block;
    t_gridDim = grid;
    t_dynamic_shared = dyn;
    if (dyn_bytes) std::memset(dyn, 0xFF, dyn_bytes);
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
            t_threadIdx = b.fibers[i].idx;
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
            continue;
        }
        // nothing runnable, warps unresolved, not everyone at the barrier: a deadlock
        err = "deadlock: " + std::to_string(at_barrier) + " threads at __syncthreads, " + std::to_string(live - at_barrier) + " at warp collectives that cannot complete";
    }
    for (auto& f : b.fibers)
        if (f.stack) stack_put(f.stack);
    t_block = nullptr;
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
    std::snprintf(buf, sizeof buf, "%s at %s:%d (thread %u,%u,%u)", msg, file, line, t_threadIdx.x, t_threadIdx.y, t_threadIdx.z);
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
};

// Launches kernel number `index` of the generated table; blocking. Returns 0 or -1 with a
// message in err (naming the kernel).
int ser_sim_launch(int index, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned long long shared_bytes, void** args, const SerSimOptions* o, char* err, size_t errlen) {
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
    Options opt{o->shuffle, o->seed, o->workers};
    unsigned long long nblocks = (unsigned long long)gx * gy * gz;
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

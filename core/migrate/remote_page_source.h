// The target's view of a post-copy's pages: a PageSource whose pages are
// in the frozen process at the source, asked for over a fabric of its own
// (PageRequest, tag kTagPages) and answered in chunks of up to 255 pages
// (PageReply: a presence bitmap and the present pages' bytes). The restore
// reads the pages that must be there before the process runs through it,
// then the LazyPageServer reads faults and its background stream.
//
// Two kinds of reads, told apart by their pattern: a read that follows the
// previous one (the server's stream walks each range in address order) is
// served from chunks of `stream_pages` requested ahead, `in_flight` of them
// kept outstanding so that the link never idles while the server copies
// pages in; any other read (a fault, an eager page of the restore) asks
// for a small aligned chunk around it alone, so that it does not wait
// behind a large one it does not need. Chunks stay cached until `cached`
// more arrived (the server reads each page about once).
//
// Thread-safety and lifetime: one thread at a time (the restore's, then the
// page server's, then whoever sends Done), each handing over to the next
// with a happens-before edge (thread start, join): the fabric is owned by
// this object and progressed only inside its calls. It must outlive the
// LazyPageServer reading it.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/ckpt/image/page_stream.h"
#include "core/migrate/wire.h"
#include "roam/base/error.h"
#include "roam/transport/transport.h"

namespace roam::migrate {

class RemotePageSource final : public ckpt::PageSource {
 public:
  struct Options {
    std::uint32_t stream_pages = 128;  // per read-ahead request, 1..255
    std::uint32_t in_flight = 4;       // read-ahead requests outstanding
    std::uint32_t fault_pages = 16;    // per isolated request, a power of two <= 128
    std::size_t cached = 32;           // chunks kept; the stream reads ahead at most half
    std::chrono::milliseconds timeout{10000};
  };
  struct Counters {
    std::uint64_t requests = 0;
    std::uint64_t stream_requests = 0;
    std::uint64_t bytes = 0;  // page bytes received
    std::uint64_t waits = 0;  // reads that waited for a reply
  };

  // Connects `fabric` to the source's migration fabric at `source_address`.
  // `extent`: where the source may have pages (Commit; sorted, disjoint).
  static Result<std::unique_ptr<RemotePageSource>> Create(std::unique_ptr<transport::Fabric> fabric,
                                                          transport::ByteView source_address,
                                                          std::uint64_t migration_id,
                                                          const std::vector<wire::Run>& extent,
                                                          const Options& options);
  ~RemotePageSource() override;
  RemotePageSource(const RemotePageSource&) = delete;
  RemotePageSource& operator=(const RemotePageSource&) = delete;

  // Every present page in address order, in chunks (the restore's fallback
  // when userfaultfd is unavailable).
  Status ForEach(const RunFn& fn) override;
  Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) override;
  std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> Extent() const override {
    return extent_;
  }
  // Asks for every page of `ranges` the extent may hold, all requests in
  // flight at once (the restore's eager pages: one round trip, not one per
  // run). Reads of them are not taken for the stream's.
  Status Prefetch(std::span<const std::pair<std::uint64_t, std::uint64_t>> ranges) override;

  // Tells the source every page is in (or why not): it drops its copy.
  Status SendDone(const wire::PagesDone& done);
  const Counters& counters() const { return counters_; }

 private:
  struct Chunk {
    std::uint64_t start = 0;
    std::uint32_t pages = 0;
    bool stream = false;
    bool prefetched = false;  // asked by Prefetch
    bool read = false;        // counted for eviction (prefetched chunks: once read)
    bool arrived = false;
    Status failed;
    std::vector<std::uint32_t> offset;  // per page: index into data, or ~0u if absent
    std::string data;

    std::uint64_t end() const { return start + std::uint64_t{pages} * ckpt::kPageSize; }
  };
  RemotePageSource(std::unique_ptr<transport::Fabric> fabric,
                   std::unique_ptr<transport::Endpoint> source, std::uint64_t migration_id,
                   std::vector<std::pair<std::uint64_t, std::uint64_t>> extent,
                   const Options& options);

  // The extent range holding `vaddr`, or extent_.size().
  std::size_t RangeOf(std::uint64_t vaddr) const;
  // The chunk (arrived or not) covering `vaddr`, or nullptr.
  std::shared_ptr<Chunk> Find(std::uint64_t vaddr) const;
  Result<std::shared_ptr<Chunk>> Ask(std::uint64_t start, std::uint32_t pages, bool stream,
                                     bool prefetched = false);
  // Asks for [start, end), cut short where the next chunk asked for begins.
  Result<std::shared_ptr<Chunk>> AskUntilNext(std::uint64_t start, std::uint64_t end, bool stream,
                                              bool prefetched = false);
  // Keeps `in_flight` stream chunks outstanding from read_ahead_ on.
  Status ReadAhead();
  Status AwaitChunk(Chunk& chunk);
  void Evict();

  std::unique_ptr<transport::Fabric> fabric_;
  std::unique_ptr<transport::Endpoint> source_;
  std::uint64_t migration_id_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> extent_;
  Options options_;
  // By start address; shared so that a reply that arrives after eviction
  // (or after a timeout) lands in a chunk nobody reads.
  std::map<std::uint64_t, std::shared_ptr<Chunk>> chunks_;
  std::deque<std::uint64_t> order_;  // arrival order, for eviction
  std::uint64_t last_read_ = 0;      // the last page read (+ kPageSize: the next in sequence)
  std::uint64_t read_ahead_ = 0;     // the stream's requests cover up to here
  std::uint32_t stream_outstanding_ = 0;
  Counters counters_;
};

}  // namespace roam::migrate

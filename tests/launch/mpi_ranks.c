/* An MPI job for launcher_pool_test.cc: the ranks sum their numbers, wait
 * long enough for the test to ask for a move, and print what they got. Its
 * ranks hold sockets and an eventfd, which roam cannot move yet. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int sum = 0;
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  sleep(3);
  MPI_Barrier(MPI_COMM_WORLD);
  printf("rank %d of %d: sum %d\n", rank, size, sum);
  fflush(stdout);
  MPI_Finalize();
  return 0;
}

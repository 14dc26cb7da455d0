"""Choose chapter 9's ResNet recipe on the validation split: train candidates for 10 epochs on the first 55 000 MNIST
training images and report their accuracy on the last 5000. The test set is never loaded.

Each candidate is `lr,weight_decay,max_shift,widths` (widths joined by '-'); several candidates run one after another,
in this process. Needs the full data ($TINYNN_BOOK_DATA or --data). Each 16-32-64 candidate takes about 8 minutes on
2 cores. The recipe the chapter uses, and the ones it was chosen against:

    python bench/resnet_recipes.py 2e-3,0.05,2,16-32-64 4e-3,0.05,2,16-32-64 2e-3,0.05,2,24-48-96
"""
import argparse, datetime, os, platform, sys, time
import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('candidates', nargs='+', help='lr,weight_decay,max_shift,widths, e.g. 2e-3,0.05,2,16-32-64')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data', help='directory with the MNIST IDX files (default: $TINYNN_BOOK_DATA)')
    args = p.parse_args()
    import tinynn_book.cnn  # registers 'resnet' with make_model
    from tinynn_book.mnist import load_mnist, make_model, train_mnist
    (x, y), _ = load_mnist(args.data)  # the test part is discarded here, unread by anything below
    print(f"{datetime.date.today()}, numpy {np.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores; "
          f"{len(x) - 5000} training and 5000 validation images, {args.epochs} epochs, seed {args.seed}", flush=True)
    rows = []
    for spec in args.candidates:
        lr, wd, shift, widths = spec.split(',')
        widths = tuple(int(w) for w in widths.split('-'))
        model = make_model('resnet', lr=float(lr), seed=args.seed, weight_decay=float(wd), max_shift=int(shift), widths=widths)
        t0 = time.perf_counter()
        h = train_mnist(model, (x, y), args.epochs, val_size=5000, seed=args.seed, progress=False, verbose=False)
        seconds = (time.perf_counter() - t0) / args.epochs
        rows.append((spec, 100 * h['val_accuracy'][-1], 100 * max(h['val_accuracy']), h['val_loss'][-1], seconds))
        print(f"{spec:>28}: validation {rows[-1][1]:.2f} % after the last epoch (best {rows[-1][2]:.2f} %), "
              f"loss {rows[-1][3]:.4f}, {seconds:.0f} s per epoch", flush=True)
    print(f"\n{'lr,wd,shift,widths':>28} {'val acc':>9} {'best':>7} {'val loss':>9} {'s/epoch':>8}")
    for spec, last, best, loss, s in rows: print(f"{spec:>28} {last:8.2f}% {best:6.2f}% {loss:9.4f} {s:8.0f}")


if __name__ == '__main__':
    main()

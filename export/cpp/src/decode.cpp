// JPEG (libjpeg-turbo) and PNG (libpng) decoding to 8-bit RGB, as Pillow's open(...).convert("RGB")
// gives it, plus EXIF orientation as Pillow's ImageOps.exif_transpose applies it.
//
// What Pillow does, and so what is done here:
//  - JPEG: the library's defaults (integer "slow" IDCT, fancy upsampling), YCbCr -> RGB by libjpeg;
//    grey -> R = G = B; CMYK/YCCK (Adobe files store it inverted) -> RGB as Pillow's convert does:
//    (255 - k) - c * (255 - k) / 255, rounded. A file that ends early is an error, as in Pillow.
//  - PNG: palette expanded, its transparency ignored; grey of 1, 2 or 4 bits scaled to 8 (x 255, x 85,
//    x 17); alpha dropped without compositing (convert("RGB") drops it); 16-bit colour and grey+alpha
//    keep the high byte (v >> 8); 16-bit grey without alpha is scaled, v -> round(v / 257), as
//    fastmlr's Python reader does (fastmlr.data.transforms.to_8bit; Pillow's own convert would clip it
//    to 255). No gamma or colour-profile correction (Pillow applies none).
//  - EXIF orientation 2..8 from a JPEG's APP1 "Exif" segment or a PNG's eXIf chunk.
#include <csetjmp>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

// jpeglib.h needs size_t and FILE declared before it.
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "fastmlr/classifier.h"

namespace fastmlr {
namespace {

// Pillow refuses images over twice its decompression-bomb limit; so does this reader.
constexpr uint64_t kMaxPixels = 2ull * (1024ull * 1024 * 1024 / 4 / 3);

void check_size(uint64_t w, uint64_t h, const std::string& name) {
  if (w < 1 || h < 1) throw std::runtime_error(name + ": empty image");
  if (w * h > kMaxPixels)
    throw std::runtime_error(name + ": " + std::to_string(w) + " x " + std::to_string(h) +
                             " pixels is over the limit of " + std::to_string(kMaxPixels));
}

// ---- EXIF orientation ----------------------------------------------------------------------------
// TIFF structure: "II"/"MM", 42, offset of IFD0; IFD0 entries of 12 bytes (tag, type, count, value).
int exif_orientation(const uint8_t* t, size_t n) {
  if (n < 8) return 1;
  const bool le = t[0] == 'I' && t[1] == 'I';
  if (!le && !(t[0] == 'M' && t[1] == 'M')) return 1;
  auto u16 = [&](size_t o) -> uint32_t { return le ? t[o] | (t[o + 1] << 8) : (t[o] << 8) | t[o + 1]; };
  auto u32 = [&](size_t o) -> uint32_t {
    return le ? t[o] | (t[o + 1] << 8) | (t[o + 2] << 16) | (uint32_t(t[o + 3]) << 24)
              : (uint32_t(t[o]) << 24) | (t[o + 1] << 16) | (t[o + 2] << 8) | t[o + 3];
  };
  if (u16(2) != 42) return 1;
  const size_t ifd = u32(4);
  if (ifd + 2 > n) return 1;
  const uint32_t entries = u16(ifd);
  for (uint32_t e = 0; e < entries; ++e) {
    const size_t o = ifd + 2 + 12 * static_cast<size_t>(e);
    if (o + 12 > n) break;
    if (u16(o) != 0x0112) continue;
    const uint32_t type = u16(o + 2);
    uint32_t v = 1;
    if (type == 3) v = u16(o + 8);        // SHORT, stored in the value field
    else if (type == 4) v = u32(o + 8);   // LONG, tolerated
    return v >= 1 && v <= 8 ? static_cast<int>(v) : 1;
  }
  return 1;
}

// Pillow's transposes: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE,
// 6 ROTATE_270 (clockwise quarter turn), 7 TRANSVERSE, 8 ROTATE_90 (counter-clockwise quarter turn).
Image orient(Image in, int orientation) {
  if (orientation <= 1 || orientation > 8) return in;
  const int W = in.width, H = in.height, ch = in.channels;
  const bool swap = orientation >= 5;
  Image out{swap ? H : W, swap ? W : H, ch, std::vector<uint8_t>(in.pixels.size())};
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = W - 1 - x; break;
        case 3: sx = W - 1 - x, sy = H - 1 - y; break;
        case 4: sy = H - 1 - y; break;
        case 5: sx = y, sy = x; break;
        case 6: sx = y, sy = H - 1 - x; break;
        case 7: sx = W - 1 - y, sy = H - 1 - x; break;
        case 8: sx = W - 1 - y, sy = x; break;
      }
      std::memcpy(&out.pixels[(static_cast<size_t>(y) * out.width + x) * ch],
                  &in.pixels[(static_cast<size_t>(sy) * W + sx) * ch], ch);
    }
  }
  return out;
}

// ---- JPEG ----------------------------------------------------------------------------------------
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegError*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}

// Warnings are ignored as Pillow ignores them, except the one for a file that ends early.
void jpeg_message(j_common_ptr c, int level) {
  if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) {
    auto* e = reinterpret_cast<JpegError*>(c->err);
    std::snprintf(e->message, sizeof e->message, "image file is truncated");
    std::longjmp(e->jump, 1);
  }
}

// MULDIV255 as Pillow rounds it.
inline uint8_t muldiv255(int a, int b) {
  const int t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

// Only plain data lives across setjmp here (the image buffer is filled through a raw pointer held by
// the caller), so a longjmp out of libjpeg leaves nothing undestroyed.
bool jpeg_decode(const uint8_t* data, size_t size, Image& img, std::vector<uint8_t>& row, int& orientation,
                 std::string& error) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.emit_message = jpeg_message;
  err.message[0] = '\0';
  if (setjmp(err.jump)) {
    error = err.message;
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      orientation = exif_orientation(m->data + 6, m->data_length - 6);
      break;
    }
  }
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  const bool grey = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  cinfo.out_color_space = cmyk ? JCS_CMYK : grey ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  if (static_cast<uint64_t>(cinfo.output_width) * cinfo.output_height > kMaxPixels) {
    std::snprintf(err.message, sizeof err.message, "%u x %u pixels is over the limit", cinfo.output_width,
                  cinfo.output_height);
    std::longjmp(err.jump, 1);
  }
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.channels = 3;
  img.pixels.resize(static_cast<size_t>(img.width) * img.height * 3);
  const int comps = cinfo.output_components;
  row.resize(static_cast<size_t>(img.width) * comps);
  const bool inverted = cmyk && cinfo.saw_Adobe_marker;  // Pillow's "CMYK;I"
  while (cinfo.output_scanline < cinfo.output_height) {
    const size_t y = cinfo.output_scanline;
    JSAMPROW r = row.data();
    jpeg_read_scanlines(&cinfo, &r, 1);
    uint8_t* out = &img.pixels[y * img.width * 3];
    for (int x = 0; x < img.width; ++x) {
      const uint8_t* p = &row[static_cast<size_t>(x) * comps];
      if (comps == 1) {
        out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = p[0];
      } else if (comps == 3) {
        std::memcpy(out + 3 * x, p, 3);
      } else {
        const int c = inverted ? 255 - p[0] : p[0], m = inverted ? 255 - p[1] : p[1];
        const int yy = inverted ? 255 - p[2] : p[2], k = inverted ? 255 - p[3] : p[3];
        const int nk = 255 - k;
        out[3 * x] = static_cast<uint8_t>(nk - muldiv255(c, nk));
        out[3 * x + 1] = static_cast<uint8_t>(nk - muldiv255(m, nk));
        out[3 * x + 2] = static_cast<uint8_t>(nk - muldiv255(yy, nk));
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

Image read_jpeg(const uint8_t* data, size_t size, const std::string& name) {
  Image img;
  std::vector<uint8_t> row;
  int orientation = 1;
  std::string error;
  if (!jpeg_decode(data, size, img, row, orientation, error)) throw std::runtime_error(name + ": bad JPEG: " + error);
  return orient(std::move(img), orientation);
}

// ---- PNG -----------------------------------------------------------------------------------------
struct PngSource {
  const uint8_t* data;
  size_t size, pos;
  char message[256];
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* s = static_cast<PngSource*>(png_get_io_ptr(png));
  if (s->pos + n > s->size) png_error(png, "image file is truncated");
  std::memcpy(out, s->data + s->pos, n);
  s->pos += n;
}

void png_fail(png_structp png, png_const_charp msg) {
  auto* s = static_cast<PngSource*>(png_get_io_ptr(png));
  std::snprintf(s->message, sizeof s->message, "%s", msg);
  png_longjmp(png, 1);
}

void png_warn(png_structp, png_const_charp) {}

struct PngRaw {
  int width = 0, height = 0, channels = 0, depth = 8, orientation = 1;
  std::vector<uint8_t> pixels;
  std::vector<png_bytep> rows;
};

bool png_decode(PngSource& src, PngRaw& raw) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_fail, png_warn);
  if (!png) {
    std::snprintf(src.message, sizeof src.message, "out of memory");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    return false;
  }
  png_set_read_fn(png, &src, png_read_mem);
  png_read_info(png, info);
  const uint64_t w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  if (w * h > kMaxPixels) png_error(png, "too many pixels");
  const int type = png_get_color_type(png, info);
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (type == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  raw.width = static_cast<int>(w);
  raw.height = static_cast<int>(h);
  raw.channels = png_get_channels(png, info);
  raw.depth = png_get_bit_depth(png, info);
  const size_t stride = png_get_rowbytes(png, info);
  raw.pixels.resize(stride * raw.height);
  raw.rows.resize(raw.height);
  for (int y = 0; y < raw.height; ++y) raw.rows[y] = raw.pixels.data() + stride * y;
  png_read_image(png, raw.rows.data());
  png_read_end(png, info);
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 exif_len = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif) raw.orientation = exif_orientation(exif, exif_len);
#endif
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

Image read_png(const uint8_t* data, size_t size, const std::string& name) {
  PngSource src{data, size, 0, {0}};
  PngRaw raw;
  if (!png_decode(src, raw)) throw std::runtime_error(name + ": bad PNG: " + src.message);
  check_size(raw.width, raw.height, name);
  // After the transforms: 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels of 8 or 16 bits.
  const int ch = raw.channels, bytes = raw.depth == 16 ? 2 : 1;
  const bool grey16 = raw.depth == 16 && ch == 1;
  Image img{raw.width, raw.height, 3, std::vector<uint8_t>(static_cast<size_t>(raw.width) * raw.height * 3)};
  for (int y = 0; y < raw.height; ++y) {
    const uint8_t* in = raw.rows[y];
    uint8_t* out = &img.pixels[static_cast<size_t>(y) * raw.width * 3];
    for (int x = 0; x < raw.width; ++x) {
      const uint8_t* p = in + static_cast<size_t>(x) * ch * bytes;
      uint8_t v[3];
      for (int c = 0; c < 3; ++c) {
        const int src_c = ch <= 2 ? 0 : c;
        const uint8_t* s = p + src_c * bytes;
        if (grey16) {
          const int g = (s[0] << 8) | s[1];
          v[c] = static_cast<uint8_t>((g + 128) / 257);  // round(g / 257): no ties, g / 257 is never k + 1/2
        } else {
          v[c] = s[0];  // 8-bit value, or the high byte of a 16-bit one (big-endian in PNG)
        }
      }
      std::memcpy(out + 3 * x, v, 3);
    }
  }
  return orient(std::move(img), raw.orientation);
}

Image pnm_to_rgb(Image img) {
  if (img.channels == 3) return img;
  Image out{img.width, img.height, 3, std::vector<uint8_t>(img.pixels.size() * 3)};
  for (size_t i = 0; i < img.pixels.size(); ++i) out.pixels[3 * i] = out.pixels[3 * i + 1] = out.pixels[3 * i + 2] = img.pixels[i];
  return out;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return read_jpeg(data, size, name);
  if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) return read_png(data, size, name);
  if (size >= 2 && data[0] == 'P' && (data[1] == '5' || data[1] == '6')) {
    throw std::runtime_error(name + ": PPM/PGM images are read from files (read_image), not from memory");
  }
  throw std::runtime_error(name + ": not a JPEG, PNG or binary PPM/PGM image");
}

Image read_image(const std::string& path) {
  check_regular_file(path, "image");  // before opening: opening a FIFO blocks until someone writes to it
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open image " + path);
  char head[2] = {0, 0};
  in.read(head, 2);
  if (in.gcount() == 2 && head[0] == 'P' && (head[1] == '5' || head[1] == '6')) return pnm_to_rgb(read_pnm(path));
  in.seekg(0, std::ios::end);
  const std::streamoff n = in.tellg();
  if (n <= 0) throw std::runtime_error(path + ": empty file");
  std::vector<uint8_t> bytes(static_cast<size_t>(n));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(bytes.data()), n);
  if (in.gcount() != n) throw std::runtime_error(path + ": read error");
  return decode_image(bytes.data(), bytes.size(), path);
}

}  // namespace fastmlr
